/*
 * caxton.h: the Caxton agent ABI (version 1, core modules) for C.
 *
 * Header-only; include it from exactly one .c file (an agent is one
 * translation unit). Build with zig's clang, no libc:
 *
 *   python -m ziglang cc --target=wasm32-freestanding -nostdlib -O2 \
 *     -Wl,--no-entry -Wl,--export-memory -Wl,--export=caxton_alloc \
 *     -Wl,--export=caxton_handle -Wl,--export=caxton_init -o agent.wasm agent.c
 *
 * What the module looks like afterwards:
 *   exports  memory, caxton_alloc, caxton_handle, caxton_init
 *   imports  only from module "caxton", and only the functions the agent
 *            actually calls (send, reply, log, now_ms).
 * The three functions are also marked export_name below, so they stay
 * exported even without the -Wl,--export flags. The agent must define
 * caxton_handle and caxton_init (return 0 from init if it has no config).
 *
 * Memory: a bump allocator over a static arena. caxton_alloc hands out
 * buffers for incoming messages; CAXTON_HANDLED() (call it, or
 * caxton_reset(), at the end of caxton_handle/caxton_init) frees everything
 * at once, so each message starts with an empty arena.
 */
#ifndef CAXTON_H
#define CAXTON_H

typedef unsigned int cx_size;   /* wasm32: pointers and sizes are 32-bit */

/* ---- host functions (module "caxton") ------------------------------- */

#define CAXTON_IMPORT(name) \
    __attribute__((import_module("caxton"), import_name(name)))
#define CAXTON_EXPORT(name) \
    __attribute__((export_name(name), visibility("default")))

/* Send a whole ACL message (UTF-8 JSON). 0 = accepted, negative = error.
 * The host sets "sender" to this agent's name. */
CAXTON_IMPORT("send")
int caxton_send(const char *msg, int len);

/* Reply to the message being handled: performative + JSON content. The
 * host fills in receiver, conversation_id, in_reply_to and protocol. */
CAXTON_IMPORT("reply")
int caxton_reply(const char *perf, int perf_len, const char *content, int content_len);

/* Log a line: level 0 debug, 1 info, 2 warn, 3 error. */
CAXTON_IMPORT("log")
void caxton_log(int level, const char *msg, int len);

/* Unix time in milliseconds. */
CAXTON_IMPORT("now_ms")
long long caxton_now_ms(void);

enum { CAXTON_DEBUG = 0, CAXTON_INFO = 1, CAXTON_WARN = 2, CAXTON_ERROR = 3 };

/* ---- what the agent defines ----------------------------------------- */

CAXTON_EXPORT("caxton_handle") int caxton_handle(char *msg, int len);
CAXTON_EXPORT("caxton_init") int caxton_init(char *config, int len);

/* ---- bump allocator --------------------------------------------------- */

#ifndef CAXTON_ARENA_SIZE
#define CAXTON_ARENA_SIZE (512 * 1024)   /* >= the largest message (256 KiB) */
#endif

static unsigned char cx_arena[CAXTON_ARENA_SIZE] __attribute__((aligned(8)));
static cx_size cx_top;

/* Returns 0 when the arena is exhausted. */
static void *cx_alloc(cx_size len)
{
    cx_size p = (cx_top + 7u) & ~7u;
    if (p > CAXTON_ARENA_SIZE || len > CAXTON_ARENA_SIZE - p)
        return 0;
    cx_top = p + len;
    return cx_arena + p;
}

static void caxton_reset(void) { cx_top = 0; }

CAXTON_EXPORT("caxton_alloc")
void *caxton_alloc(int len)
{
    void *p;
    if (len < 0)
        __builtin_trap();
    p = cx_alloc((cx_size)len);
    if (!p)
        __builtin_trap();   /* never hand the host a bad pointer */
    return p;
}

/* ---- string helpers --------------------------------------------------- */

static cx_size cx_strlen(const char *s)
{
    cx_size n = 0;
    while (s[n])
        n++;
    return n;
}

static int cx_memeq(const char *a, const char *b, cx_size n)
{
    for (cx_size i = 0; i < n; i++)
        if (a[i] != b[i])
            return 0;
    return 1;
}

/* A growable-by-caller output buffer. */
typedef struct {
    char *buf;
    cx_size len, cap;
} cx_buf;

static void cx_put(cx_buf *b, const char *s, cx_size n)
{
    for (cx_size i = 0; i < n && b->len < b->cap; i++)
        b->buf[b->len++] = s[i];
}

static void cx_puts(cx_buf *b, const char *s) { cx_put(b, s, cx_strlen(s)); }

static void cx_put_i64(cx_buf *b, long long v)
{
    char tmp[24];
    int i = 24;
    unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
    do {
        tmp[--i] = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (v < 0)
        tmp[--i] = '-';
    cx_put(b, tmp + i, (cx_size)(24 - i));
}

/* ---- minimal JSON access ---------------------------------------------
 * Values are located in the raw text; nothing is unescaped. A "span" is a
 * pointer/length pair into the message. */

typedef struct {
    const char *p;
    cx_size n;   /* 0 = absent */
} cx_span;

static const char *cx_ws(const char *p, const char *e)
{
    while (p < e && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r'))
        p++;
    return p;
}

/* p at an opening quote; returns the position after the closing quote */
static const char *cx_skip_str(const char *p, const char *e)
{
    for (p++; p < e; p++) {
        if (*p == '\\')
            p++;
        else if (*p == '"')
            return p + 1;
    }
    return e;
}

/* p at any JSON value; returns the position just after it */
static const char *cx_skip_val(const char *p, const char *e)
{
    int depth = 0;
    while (p < e) {
        char c = *p;
        if (c == '"') {
            p = cx_skip_str(p, e);
            if (!depth)
                return p;
            continue;
        }
        if (c == '{' || c == '[') {
            depth++;
        } else if (c == '}' || c == ']') {
            if (!depth)
                return p;
            if (!--depth)
                return p + 1;
        } else if (!depth && (c == ',' || c == ' ' || c == '\t' || c == '\n' || c == '\r')) {
            return p;
        }
        p++;
    }
    return p;
}

/* The raw value of top-level member `key` of the JSON object in
 * [obj, obj+len); .n == 0 when there is none. */
static cx_span cx_field(const char *obj, cx_size len, const char *key)
{
    cx_span none = {0, 0};
    const char *p = obj, *e = obj + len;
    cx_size kl = cx_strlen(key);
    p = cx_ws(p, e);
    if (p >= e || *p != '{')
        return none;
    p++;
    for (;;) {
        const char *ks, *ke, *v, *ve;
        p = cx_ws(p, e);
        if (p >= e || *p != '"')
            return none;
        ks = p + 1;
        p = cx_skip_str(p, e);
        ke = p - 1;
        p = cx_ws(p, e);
        if (p >= e || *p != ':')
            return none;
        v = cx_ws(p + 1, e);
        if (v >= e)
            return none;
        ve = cx_skip_val(v, e);
        if ((cx_size)(ke - ks) == kl && cx_memeq(ks, key, kl)) {
            cx_span s = {v, (cx_size)(ve - v)};
            return s;
        }
        p = cx_ws(ve, e);
        if (p >= e || *p != ',')
            return none;
        p++;
    }
}

/* Is the span the JSON string "s" (compared raw)? */
static int cx_is_str(cx_span v, const char *s)
{
    cx_size n = cx_strlen(s);
    return v.n == n + 2 && v.p[0] == '"' && v.p[n + 1] == '"' && cx_memeq(v.p + 1, s, n);
}

/* Parse an integer span (optional '-', digits; a fraction is ignored).
 * Returns 1 and sets *out when it starts with a number. */
static int cx_int(cx_span v, long long *out)
{
    cx_size i = 0;
    int neg = 0, any = 0;
    long long n = 0;
    if (i < v.n && v.p[i] == '-') {
        neg = 1;
        i++;
    }
    for (; i < v.n && v.p[i] >= '0' && v.p[i] <= '9'; i++) {
        n = n * 10 + (v.p[i] - '0');
        any = 1;
    }
    if (any)
        *out = neg ? -n : n;
    return any;
}

/* reply(perf, content) with C strings */
static int cx_reply(const char *perf, const char *content, cx_size content_len)
{
    return caxton_reply(perf, (int)cx_strlen(perf), content, (int)content_len);
}

#endif /* CAXTON_H */
