/*
 * bidder.c: the C twin of examples/agents/wat/cnp_bidder.wat, a FIPA
 * contract-net participant with a fixed price.
 *
 *   caxton_init      config {"price": N} (integer; 100 when absent)
 *   cfp              -> reply propose {"price":N}
 *   accept-proposal  -> reply inform  {"done":true,"price":N}
 *   reject-proposal  -> nothing
 *   anything else    -> reply not-understood {"reason":"unexpected"}
 *                       (except node notices from "caxton" and
 *                       not-understood itself, which are ignored)
 *
 * Imports only caxton.reply. Build: see README.md.
 */
#include "caxton.h"

static long long price = 100;

int caxton_init(char *config, int len)
{
    long long n;
    if (cx_int(cx_field(config, (cx_size)len, "price"), &n))
        price = n;
    caxton_reset();
    return 0;
}

static void reply_price(const char *perf, const char *prefix)
{
    char out[64];
    cx_buf b = {out, 0, sizeof out};
    cx_puts(&b, prefix);
    cx_put_i64(&b, price);
    cx_puts(&b, "}");
    cx_reply(perf, b.buf, b.len);
}

static int handle(const char *msg, cx_size len)
{
    cx_span perf = cx_field(msg, len, "performative");
    if (!perf.n)
        return 1;
    if (cx_is_str(perf, "cfp")) {
        reply_price("propose", "{\"price\":");
    } else if (cx_is_str(perf, "accept-proposal")) {
        reply_price("inform", "{\"done\":true,\"price\":");
    } else if (cx_is_str(perf, "reject-proposal") || cx_is_str(perf, "not-understood")
               || cx_is_str(cx_field(msg, len, "sender"), "caxton")) {
        /* nothing to say */
    } else {
        static const char unexpected[] = "{\"reason\":\"unexpected\"}";
        cx_reply("not-understood", unexpected, sizeof unexpected - 1);
    }
    return 0;
}

int caxton_handle(char *msg, int len)
{
    int r = handle(msg, (cx_size)len);
    caxton_reset();
    return r;
}
