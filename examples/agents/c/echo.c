/*
 * echo.c: the C twin of examples/agents/wat/echo.wat.
 *
 * Every message is answered with an `inform` whose content is the whole
 * incoming message (already a JSON object). The host fills in the reply's
 * receiver, conversation_id, in_reply_to and protocol. Always returns 0.
 *
 * Imports only caxton.reply. Build: see README.md.
 */
#include "caxton.h"

int caxton_init(char *config, int len)
{
    (void)config;
    (void)len;
    caxton_reset();
    return 0;
}

int caxton_handle(char *msg, int len)
{
    caxton_reply("inform", 6, msg, len);
    caxton_reset();
    return 0;
}
