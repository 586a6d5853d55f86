;; counter.wat: a counter that keeps its count in an MCP state server
;; (SPEC 8), so the count survives node restarts, updates and traps.
;;
;; Behaviour:
;;   caxton_init  config {"key": "<state key>", "server": "<MCP server name>"},
;;                both optional (defaults "counter" and "state"; a null or
;;                non-object config means both defaults). A key or server
;;                that is not a non-empty JSON string, or is too long (key
;;                over 254 bytes as written, server over 63), fails init
;;                (the deploy is refused).
;;                Then `send`s
;;                  {"performative":"request","receiver":"mcp:<server>/retrieve",
;;                   "content":{"key":<key>}}
;;                and waits for the answer ("restoring").
;;   request      from anyone but the node ("caxton") and MCP tools
;;                ("mcp:..."):
;;                - restored: count += 1, reply `inform` {"count":<count>},
;;                  and checkpoint (below);
;;                - still restoring: count the request and keep who to
;;                  answer (reply_to or sender, conversation_id, reply_with,
;;                  protocol) in one of 16 slots; the answer is sent once
;;                  the count is known. With every slot taken (or a
;;                  requester field too long to keep) the request is not
;;                  counted and is answered `refuse` {"reason":"restoring"}.
;;                  If no retrieve is in flight (the last one failed), a new
;;                  one is sent.
;;   inform from mcp:<server>/retrieve, content {"key","value","found"}
;;                (or a CallToolResult whose structuredContent is that):
;;                count = (value if found, else 0) + the requests counted
;;                while restoring; the waiting requesters get `inform`
;;                {"count":N} in turn (value+1, value+2, ...) by `send`, in
;;                their conversation (in_reply_to = their reply_with,
;;                protocol kept); then checkpoint. A found value that is not
;;                an integer is logged at warn and counts as 0. A second
;;                restore answer is ignored.
;;   inform from mcp:<server>/store
;;                the checkpoint landed; if the count moved on meanwhile,
;;                checkpoint again.
;;   failure from the node (content {"reason","message","receiver",...}):
;;                for ".../retrieve": logged at warn; the waiting requesters
;;                get `failure` {"reason":"state-unavailable"} and are not
;;                counted; the next request retries the retrieve.
;;                for ".../store": logged at warn; the next request
;;                checkpoints again. Anything else: logged at warn.
;;   anything else (not-understood, informs from clients, ...) is logged at
;;                warn and ignored. caxton_handle returns 1 only for a
;;                message without a performative.
;;
;; Checkpoint: at most one store is in flight, so checkpoints reach the
;; server in order whatever the node does with concurrent tool calls:
;;   {"performative":"request","receiver":"mcp:<server>/store",
;;    "content":{"key":<key>,"value":<count>}}
;; is sent when the count changed and no store is in flight; the store's
;; answer sends the next one if the count moved on. Nothing is stored
;; before the restore answer, so a checkpoint never overwrites the stored
;; count with one that did not start from it.
;;
;; The deploy must allow the tools: spec "tools": ["state/retrieve",
;; "state/store"] (or "state/*"). max_sends must be at least 17 (16 waiting
;; answers and a store in one call; the default is 1000).
;;
;; ABI use (Caxton agent ABI v1, core module):
;;   exports  memory, caxton_alloc, caxton_handle, caxton_init
;;   imports  caxton.send(ptr, len) -> i32        tool requests, late answers
;;            caxton.reply(perf, perf_len, content, content_len) -> i32
;;            caxton.log(level, ptr, len)
;;
;; Memory (page 0): constants 0..2047, number scratch 2048..2079, the key
;; (raw JSON string, quotes included) 2304 (256), the server name (without
;; quotes) 2560 (64), outgoing messages built at 4096 (4096), waiting
;; requesters 8192 + i*3584 (16 slots, up to 65536: receiver 1024,
;; conversation_id 1024, reply_with 1024, protocol 256, each as raw JSON,
;; then their four lengths as i32 at +3328).
;; Strings are kept as raw JSON values so they can be copied into messages
;; as they are. The heap (incoming messages, log lines) starts at 65536.
;; The allocator, the JSON scanner and the writer are cnp_manager.wat's.
;;
;; Build: python -c "import wasmtime,sys; open(sys.argv[2],'wb').write(wasmtime.wat2wasm(open(sys.argv[1]).read()))" counter.wat counter.wasm
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "log" (func $log (param i32 i32 i32)))

  (memory (export "memory") 2)

  ;; Constants (offset, length)
  (data (i32.const 0) "performative")                           ;; 0, 12
  (data (i32.const 16) "sender")                                ;; 16, 6
  (data (i32.const 32) "conversation_id")                       ;; 32, 15
  (data (i32.const 48) "reply_with")                            ;; 48, 10
  (data (i32.const 64) "reply_to")                              ;; 64, 8
  (data (i32.const 80) "content")                               ;; 80, 7
  (data (i32.const 96) "protocol")                              ;; 96, 8
  (data (i32.const 112) "receiver")                             ;; 112, 8
  (data (i32.const 128) "in_reply_to")                          ;; 128, 11
  (data (i32.const 144) "key")                                  ;; 144, 3
  (data (i32.const 160) "server")                               ;; 160, 6
  (data (i32.const 176) "value")                                ;; 176, 5
  (data (i32.const 192) "found")                                ;; 192, 5
  (data (i32.const 208) "structuredContent")                    ;; 208, 17
  (data (i32.const 240) "request")                              ;; 240, 7
  (data (i32.const 256) "inform")                               ;; 256, 6
  (data (i32.const 272) "failure")                              ;; 272, 7
  (data (i32.const 288) "refuse")                               ;; 288, 6
  (data (i32.const 304) "caxton")                               ;; 304, 6
  (data (i32.const 320) "\"mcp:")                               ;; 320, 5
  (data (i32.const 336) "/retrieve\"")                          ;; 336, 10
  (data (i32.const 352) "/store\"")                             ;; 352, 7
  (data (i32.const 368) "\"counter\"")                          ;; 368, 9
  (data (i32.const 384) "state")                                ;; 384, 5
  (data (i32.const 400) "{\"performative\":\"request\",\"receiver\":\"mcp:") ;; 400, 42
  (data (i32.const 448) ",\"content\":{\"key\":")               ;; 448, 18
  (data (i32.const 480) ",\"value\":")                          ;; 480, 9
  (data (i32.const 496) "{\"count\":")                          ;; 496, 9
  (data (i32.const 512) "{\"performative\":\"")                 ;; 512, 17
  (data (i32.const 544) "\",\"receiver\":")                     ;; 544, 13
  (data (i32.const 560) "{\"reason\":\"restoring\"}")           ;; 560, 22
  (data (i32.const 592) "{\"reason\":\"state-unavailable\"}")   ;; 592, 30
  (data (i32.const 640) "restored the count from the state server") ;; 640, 40
  (data (i32.const 704) "no stored count; starting from 0") ;; 704, 32
  (data (i32.const 752) "the stored count is not an integer; starting from 0") ;; 752, 51
  (data (i32.const 816) "could not retrieve the count: ") ;; 816, 30
  (data (i32.const 864) "could not store the count: ") ;; 864, 27
  (data (i32.const 896) "failure from the node: ") ;; 896, 23
  (data (i32.const 928) "ignoring an unexpected message: ") ;; 928, 32
  (data (i32.const 976) "config: key must be a JSON string of at most 254 bytes") ;; 976, 54
  (data (i32.const 1040) "config: server must be a JSON string of at most 63 bytes") ;; 1040, 56
  (data (i32.const 1104) "could not send a request to the state server") ;; 1104, 44
  (data (i32.const 1152) "could not send a waiting answer") ;; 1152, 31

  ;; The key (raw JSON string) and the server name (bare)
  (global $key_len (mut i32) (i32.const 0))
  (global $srv_len (mut i32) (i32.const 0))
  ;; The count: before the restore, the requests counted while restoring;
  ;; after it, the whole count.
  (global $count (mut i64) (i64.const 0))
  (global $restored (mut i32) (i32.const 0))
  (global $retrieving (mut i32) (i32.const 0))
  (global $storing (mut i32) (i32.const 0))
  ;; the count the last store sent carried
  (global $saved (mut i64) (i64.const 0))
  ;; requesters waiting for the restore
  (global $waiting (mut i32) (i32.const 0))
  ;; the message being handled (or the config during init): [$m, $me)
  (global $m (mut i32) (i32.const 0))
  (global $me (mut i32) (i32.const 0))
  ;; output cursor
  (global $o (mut i32) (i32.const 0))
  (global $num_ok (mut i32) (i32.const 0))

  ;; ---------------------------------------------------------------------
  ;; Bump allocator for caxton_alloc. The heap starts at 64 KiB (page 0
  ;; holds constants and state) and is reset after each handled message, so
  ;; the incoming buffer stays valid for the whole of caxton_handle. Memory
  ;; grows on demand; if it cannot grow we trap rather than return a bad
  ;; pointer.
  ;; ---------------------------------------------------------------------
  (global $heap_base i32 (i32.const 65536))
  (global $top (mut i32) (i32.const 65536))

  (func $alloc (export "caxton_alloc") (param $len i32) (result i32)
    (local $p i32) (local $end i32) (local $have i32)
    (local.set $p (i32.and (i32.add (global.get $top) (i32.const 7)) (i32.const -8)))
    (local.set $end (i32.add (local.get $p) (local.get $len)))
    (if (i32.or (i32.lt_s (local.get $len) (i32.const 0))
                (i32.lt_u (local.get $end) (local.get $p)))
      (then (unreachable)))
    (local.set $have (i32.shl (memory.size) (i32.const 16)))
    (if (i32.gt_u (local.get $end) (local.get $have))
      (then
        (if (i32.eq
              (memory.grow
                (i32.shr_u (i32.add (i32.sub (local.get $end) (local.get $have)) (i32.const 65535))
                           (i32.const 16)))
              (i32.const -1))
          (then (unreachable)))))
    (global.set $top (local.get $end))
    (local.get $p))
  ;; ---------------------------------------------------------------------
  ;; Minimal JSON scanning helpers. Positions are absolute addresses and
  ;; $e is always the exclusive end of the buffer. Nothing is unescaped:
  ;; string values are handled as raw JSON text, which is what we need to
  ;; compare short ASCII tokens and to copy values into outgoing messages.
  ;; ---------------------------------------------------------------------

  ;; Skip JSON whitespace (space, tab, CR, LF).
  (func $ws (param $p i32) (param $e i32) (result i32)
    (local $c i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $e)))
        (local.set $c (i32.load8_u (local.get $p)))
        (br_if $done
          (i32.and
            (i32.and (i32.ne (local.get $c) (i32.const 32)) (i32.ne (local.get $c) (i32.const 9)))
            (i32.and (i32.ne (local.get $c) (i32.const 10)) (i32.ne (local.get $c) (i32.const 13)))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))

  ;; $p is at an opening quote; return the position just after the closing
  ;; quote (backslash escapes honoured), or $e if the string is unterminated.
  (func $skip_str (param $p i32) (param $e i32) (result i32)
    (local $c i32)
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $e)))
        (local.set $c (i32.load8_u (local.get $p)))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (if (i32.eq (local.get $c) (i32.const 34)) (then (return (local.get $p))))
        (if (i32.eq (local.get $c) (i32.const 92))
          (then (local.set $p (i32.add (local.get $p) (i32.const 1)))))
        (br $next)))
    (local.get $e))

  ;; $p is at the first byte of any JSON value; return the position just
  ;; after it (objects and arrays are skipped as a whole, strings inside them
  ;; may contain brackets).
  (func $skip_val (param $p i32) (param $e i32) (result i32)
    (local $c i32) (local $depth i32)
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $e)))
        (local.set $c (i32.load8_u (local.get $p)))
        ;; string
        (if (i32.eq (local.get $c) (i32.const 34))
          (then
            (local.set $p (call $skip_str (local.get $p) (local.get $e)))
            (br_if $done (i32.eqz (local.get $depth)))
            (br $next)))
        ;; { or [
        (if (i32.or (i32.eq (local.get $c) (i32.const 123)) (i32.eq (local.get $c) (i32.const 91)))
          (then
            (local.set $depth (i32.add (local.get $depth) (i32.const 1)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br $next)))
        ;; } or ]
        (if (i32.or (i32.eq (local.get $c) (i32.const 125)) (i32.eq (local.get $c) (i32.const 93)))
          (then
            ;; a closing bracket at depth 0 ends a scalar: stop before it
            (br_if $done (i32.eqz (local.get $depth)))
            (local.set $depth (i32.sub (local.get $depth) (i32.const 1)))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))
            (br_if $done (i32.eqz (local.get $depth)))
            (br $next)))
        ;; a scalar (number, true, false, null) ends at , or whitespace
        (if (i32.eqz (local.get $depth))
          (then
            (br_if $done
              (i32.or
                (i32.or (i32.eq (local.get $c) (i32.const 44)) (i32.eq (local.get $c) (i32.const 32)))
                (i32.or (i32.eq (local.get $c) (i32.const 9))
                  (i32.or (i32.eq (local.get $c) (i32.const 10)) (i32.eq (local.get $c) (i32.const 13))))))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (local.get $p))

  ;; Byte-wise equality of [a, a+al) and [b, b+bl).
  (func $eq (param $a i32) (param $al i32) (param $b i32) (param $bl i32) (result i32)
    (local $i i32)
    (if (i32.ne (local.get $al) (local.get $bl)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $al)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $a) (local.get $i)))
                    (i32.load8_u (i32.add (local.get $b) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))

  ;; $p is at (or before, whitespace allowed) a JSON object. Return the
  ;; position of the value of its top-level member named [kp, kp+kl), or -1
  ;; if the object has no such member (or $p is not an object).
  (func $field (param $p i32) (param $e i32) (param $kp i32) (param $kl i32) (result i32)
    (local $ks i32) (local $ke i32) (local $v i32)
    (local.set $p (call $ws (local.get $p) (local.get $e)))
    (if (i32.ge_u (local.get $p) (local.get $e)) (then (return (i32.const -1))))
    (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 123)) (then (return (i32.const -1))))
    (local.set $p (i32.add (local.get $p) (i32.const 1)))
    (loop $member
      (local.set $p (call $ws (local.get $p) (local.get $e)))
      (if (i32.ge_u (local.get $p) (local.get $e)) (then (return (i32.const -1))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 34)) (then (return (i32.const -1))))
      (local.set $ks (i32.add (local.get $p) (i32.const 1)))
      (local.set $p (call $skip_str (local.get $p) (local.get $e)))
      (local.set $ke (i32.sub (local.get $p) (i32.const 1)))
      (local.set $p (call $ws (local.get $p) (local.get $e)))
      (if (i32.ge_u (local.get $p) (local.get $e)) (then (return (i32.const -1))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 58)) (then (return (i32.const -1))))
      (local.set $v (call $ws (i32.add (local.get $p) (i32.const 1)) (local.get $e)))
      (if (i32.ge_u (local.get $v) (local.get $e)) (then (return (i32.const -1))))
      (if (call $eq (local.get $ks) (i32.sub (local.get $ke) (local.get $ks)) (local.get $kp) (local.get $kl))
        (then (return (local.get $v))))
      (local.set $p (call $ws (call $skip_val (local.get $v) (local.get $e)) (local.get $e)))
      (if (i32.ge_u (local.get $p) (local.get $e)) (then (return (i32.const -1))))
      (if (i32.ne (i32.load8_u (local.get $p)) (i32.const 44)) (then (return (i32.const -1))))
      (local.set $p (i32.add (local.get $p) (i32.const 1)))
      (br $member))
    (i32.const -1))

  ;; Is the value at $v (from $field; -1 allowed) the JSON string whose raw
  ;; text is [sp, sp+sl)?
  (func $str_is (param $v i32) (param $e i32) (param $sp i32) (param $sl i32) (result i32)
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i32.const 0))))
    (if (i32.gt_u (i32.add (i32.add (local.get $v) (local.get $sl)) (i32.const 2)) (local.get $e))
      (then (return (i32.const 0))))
    (if (i32.ne (i32.load8_u (local.get $v)) (i32.const 34)) (then (return (i32.const 0))))
    (if (i32.ne (i32.load8_u (i32.add (i32.add (local.get $v) (local.get $sl)) (i32.const 1))) (i32.const 34))
      (then (return (i32.const 0))))
    (call $eq (i32.add (local.get $v) (i32.const 1)) (local.get $sl) (local.get $sp) (local.get $sl)))

  ;; Parse an integer at $v (optional '-', then digits; a fraction or
  ;; ---------------------------------------------------------------------
  ;; Output writer: appends to the buffer at $o (callers point $o at memory
  ;; big enough for what they write).
  ;; ---------------------------------------------------------------------

  (func $w (param $p i32) (param $n i32)
    (memory.copy (global.get $o) (local.get $p) (local.get $n))
    (global.set $o (i32.add (global.get $o) (local.get $n))))

  (func $wb (param $c i32)
    (i32.store8 (global.get $o) (local.get $c))
    (global.set $o (i32.add (global.get $o) (i32.const 1))))

  ;; Signed decimal (i64.min_s included: the magnitude is handled unsigned).
  (func $wint (param $n i64)
    (local $p i32)
    (if (i64.lt_s (local.get $n) (i64.const 0))
      (then
        (call $wb (i32.const 45))
        (local.set $n (i64.sub (i64.const 0) (local.get $n)))))
    ;; digits are produced backwards into the scratch area [2048, 2080)
    (local.set $p (i32.const 2080))
    (loop $next
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $next (i64.ne (local.get $n) (i64.const 0))))
    (call $w (local.get $p) (i32.sub (i32.const 2080) (local.get $p))))
  ;; ---------------------------------------------------------------------
  ;; Message helpers
  ;; ---------------------------------------------------------------------

  ;; Top-level member of the message being handled.
  (func $mf (param $kp i32) (param $kl i32) (result i32)
    (call $field (global.get $m) (global.get $me) (local.get $kp) (local.get $kl)))

  ;; Length of the raw JSON value at $v (in the message being handled).
  (func $vlen (param $v i32) (result i32)
    (i32.sub (call $skip_val (local.get $v) (global.get $me)) (local.get $v)))

  ;; Copy the raw value at $v to $dst. Returns its length, 0 when $v is -1
  ;; (absent), -1 when it is longer than $max.
  (func $save (param $v i32) (param $dst i32) (param $max i32) (result i32)
    (local $n i32)
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i32.const 0))))
    (local.set $n (call $vlen (local.get $v)))
    (if (i32.gt_u (local.get $n) (local.get $max)) (then (return (i32.const -1))))
    (memory.copy (local.get $dst) (local.get $v) (local.get $n))
    (local.get $n))

  ;; ,"<name>":   (the value is written by the caller)
  (func $wkey (param $name i32) (param $nl i32)
    (call $wb (i32.const 44))
    (call $wb (i32.const 34))
    (call $w (local.get $name) (local.get $nl))
    (call $wb (i32.const 34))
    (call $wb (i32.const 58)))

  ;; ,"<name>":<raw value>   (nothing when the value is absent: $rl = 0)
  (func $wfield (param $name i32) (param $nl i32) (param $raw i32) (param $rl i32)
    (if (i32.eqz (local.get $rl)) (then (return)))
    (call $wkey (local.get $name) (local.get $nl))
    (call $w (local.get $raw) (local.get $rl)))


  ;; Does the raw value at $v (length $vl) start / end with [sp, sp+sl)?
  (func $starts (param $v i32) (param $vl i32) (param $sp i32) (param $sl i32) (result i32)
    (if (i32.or (i32.lt_s (local.get $v) (i32.const 0)) (i32.lt_u (local.get $vl) (local.get $sl)))
      (then (return (i32.const 0))))
    (call $eq (local.get $v) (local.get $sl) (local.get $sp) (local.get $sl)))

  (func $ends (param $v i32) (param $vl i32) (param $sp i32) (param $sl i32) (result i32)
    (if (i32.or (i32.lt_s (local.get $v) (i32.const 0)) (i32.lt_u (local.get $vl) (local.get $sl)))
      (then (return (i32.const 0))))
    (call $eq (i32.add (local.get $v) (i32.sub (local.get $vl) (local.get $sl))) (local.get $sl)
              (local.get $sp) (local.get $sl)))

  ;; The raw value at $v (in the message being handled) as an integer, if
  ;; the whole value is one: an optional '-' and 1 to 18 digits, nothing
  ;; else (no fraction, no exponent). Sets $num_ok.
  (func $whole_int (param $v i32) (result i64)
    (local $end i32) (local $p i32) (local $neg i32) (local $n i64) (local $c i32) (local $digits i32)
    (global.set $num_ok (i32.const 0))
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i64.const 0))))
    (local.set $end (call $skip_val (local.get $v) (global.get $me)))
    (local.set $p (local.get $v))
    (if (i32.lt_u (local.get $p) (local.get $end))
      (then
        (if (i32.eq (i32.load8_u (local.get $p)) (i32.const 45))
          (then
            (local.set $neg (i32.const 1))
            (local.set $p (i32.add (local.get $p) (i32.const 1)))))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $p) (local.get $end)))
        (local.set $c (i32.sub (i32.load8_u (local.get $p)) (i32.const 48)))
        (if (i32.gt_u (local.get $c) (i32.const 9)) (then (return (i64.const 0))))
        (local.set $digits (i32.add (local.get $digits) (i32.const 1)))
        (if (i32.gt_u (local.get $digits) (i32.const 18)) (then (return (i64.const 0))))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (local.set $p (i32.add (local.get $p) (i32.const 1)))
        (br $next)))
    (if (i32.eqz (local.get $digits)) (then (return (i64.const 0))))
    (global.set $num_ok (i32.const 1))
    (if (result i64) (local.get $neg)
      (then (i64.sub (i64.const 0) (local.get $n)))
      (else (local.get $n))))

  ;; Log [p, p+n) at $level followed by the raw JSON value at $v (if any).
  ;; The line is built on the heap, which is reset after each call.
  (func $log_with (param $level i32) (param $p i32) (param $n i32) (param $v i32)
    (local $vl i32) (local $buf i32)
    (if (i32.ge_s (local.get $v) (i32.const 0))
      (then (local.set $vl (call $vlen (local.get $v)))))
    ;; the host cuts log lines at 4096 bytes: no need to copy more
    (if (i32.gt_u (local.get $vl) (i32.const 4096)) (then (local.set $vl (i32.const 4096))))
    (local.set $buf (call $alloc (i32.add (local.get $n) (local.get $vl))))
    (memory.copy (local.get $buf) (local.get $p) (local.get $n))
    (memory.copy (i32.add (local.get $buf) (local.get $n)) (local.get $v) (local.get $vl))
    (call $log (local.get $level) (local.get $buf) (i32.add (local.get $n) (local.get $vl))))

  ;; ---------------------------------------------------------------------
  ;; Requests to the state server
  ;; ---------------------------------------------------------------------

  ;; {"performative":"request","receiver":"mcp:<server><tool>","content":{"key":<key>[,"value":<count>]}}
  ;; where [tool, tool+tl) is "/retrieve\"" or "/store\"". Returns send's result.
  (func $tool_request (param $tool i32) (param $tl i32) (param $with_value i32) (result i32)
    (global.set $o (i32.const 4096))
    (call $w (i32.const 400) (i32.const 42))
    (call $w (i32.const 2560) (global.get $srv_len))
    (call $w (local.get $tool) (local.get $tl))
    (call $w (i32.const 448) (i32.const 18))
    (call $w (i32.const 2304) (global.get $key_len))
    (if (local.get $with_value)
      (then
        (call $w (i32.const 480) (i32.const 9))
        (call $wint (global.get $count))))
    (call $wb (i32.const 125))
    (call $wb (i32.const 125))
    (call $send (i32.const 4096) (i32.sub (global.get $o) (i32.const 4096))))

  (func $start_retrieve
    (if (i32.eqz (call $tool_request (i32.const 336) (i32.const 10) (i32.const 0)))
      (then (global.set $retrieving (i32.const 1)))
      (else (call $log (i32.const 2) (i32.const 1104) (i32.const 44)))))

  ;; Checkpoint the count, unless a store is in flight (its answer will) or
  ;; the server already has this count.
  (func $checkpoint
    (if (global.get $storing) (then (return)))
    (if (i64.eq (global.get $count) (global.get $saved)) (then (return)))
    (if (i32.eqz (call $tool_request (i32.const 352) (i32.const 7) (i32.const 1)))
      (then
        (global.set $storing (i32.const 1))
        (global.set $saved (global.get $count)))
      (else (call $log (i32.const 2) (i32.const 1104) (i32.const 44)))))

  ;; ---------------------------------------------------------------------
  ;; Requesters waiting for the restore
  ;; ---------------------------------------------------------------------

  (func $slot (param $i i32) (result i32)
    (i32.add (i32.const 8192) (i32.mul (local.get $i) (i32.const 3584))))

  ;; Keep who to answer for the request being handled. 0 if it cannot be
  ;; kept (no slot left, or a field too long).
  (func $keep (result i32)
    (local $s i32) (local $v i32) (local $n i32)
    (if (i32.ge_u (global.get $waiting) (i32.const 16)) (then (return (i32.const 0))))
    (local.set $s (call $slot (global.get $waiting)))
    ;; the answer goes to reply_to if present, else to the sender
    (local.set $v (call $mf (i32.const 64) (i32.const 8)))
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then (local.set $v (call $mf (i32.const 16) (i32.const 6)))))
    (local.set $n (call $save (local.get $v) (local.get $s) (i32.const 1024)))
    (if (i32.le_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (i32.store (i32.add (local.get $s) (i32.const 3328)) (local.get $n))
    (local.set $n (call $save (call $mf (i32.const 32) (i32.const 15))
                              (i32.add (local.get $s) (i32.const 1024)) (i32.const 1024)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (i32.store (i32.add (local.get $s) (i32.const 3332)) (local.get $n))
    (local.set $n (call $save (call $mf (i32.const 48) (i32.const 10))
                              (i32.add (local.get $s) (i32.const 2048)) (i32.const 1024)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (i32.store (i32.add (local.get $s) (i32.const 3336)) (local.get $n))
    (local.set $n (call $save (call $mf (i32.const 96) (i32.const 8))
                              (i32.add (local.get $s) (i32.const 3072)) (i32.const 256)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 0))))
    (i32.store (i32.add (local.get $s) (i32.const 3340)) (local.get $n))
    (global.set $waiting (i32.add (global.get $waiting) (i32.const 1)))
    (i32.const 1))

  ;; Send waiting requester $i <perf> with content {"count":$n} ($cl = 0) or
  ;; the fixed JSON [c, c+cl), in its conversation.
  (func $answer (param $i i32) (param $perf i32) (param $pl i32) (param $n i64) (param $c i32) (param $cl i32)
    (local $s i32)
    (local.set $s (call $slot (local.get $i)))
    (global.set $o (i32.const 4096))
    (call $w (i32.const 512) (i32.const 17))
    (call $w (local.get $perf) (local.get $pl))
    (call $w (i32.const 544) (i32.const 13))
    (call $w (local.get $s) (i32.load (i32.add (local.get $s) (i32.const 3328))))
    (call $wfield (i32.const 32) (i32.const 15)
      (i32.add (local.get $s) (i32.const 1024)) (i32.load (i32.add (local.get $s) (i32.const 3332))))
    (call $wfield (i32.const 128) (i32.const 11)
      (i32.add (local.get $s) (i32.const 2048)) (i32.load (i32.add (local.get $s) (i32.const 3336))))
    (call $wfield (i32.const 96) (i32.const 8)
      (i32.add (local.get $s) (i32.const 3072)) (i32.load (i32.add (local.get $s) (i32.const 3340))))
    (call $wkey (i32.const 80) (i32.const 7))
    (if (local.get $cl)
      (then (call $w (local.get $c) (local.get $cl)))
      (else
        (call $w (i32.const 496) (i32.const 9))
        (call $wint (local.get $n))
        (call $wb (i32.const 125))))
    (call $wb (i32.const 125))
    (if (call $send (i32.const 4096) (i32.sub (global.get $o) (i32.const 4096)))
      (then (call $log (i32.const 2) (i32.const 1152) (i32.const 31)))))

  ;; ---------------------------------------------------------------------
  ;; Handlers
  ;; ---------------------------------------------------------------------

  (func $on_request (result i32)
    (if (global.get $restored)
      (then
        (global.set $count (i64.add (global.get $count) (i64.const 1)))
        (global.set $o (i32.const 4096))
        (call $w (i32.const 496) (i32.const 9))
        (call $wint (global.get $count))
        (call $wb (i32.const 125))
        (drop (call $reply (i32.const 256) (i32.const 6) (i32.const 4096) (i32.sub (global.get $o) (i32.const 4096))))
        (call $checkpoint)
        (return (i32.const 0))))
    ;; still restoring: the answer waits for the stored count
    (if (call $keep)
      (then (global.set $count (i64.add (global.get $count) (i64.const 1))))
      (else (drop (call $reply (i32.const 288) (i32.const 6) (i32.const 560) (i32.const 22)))))
    (if (i32.eqz (global.get $retrieving)) (then (call $start_retrieve)))
    (i32.const 0))

  ;; The retrieve's answer: content {"key","value","found"}.
  (func $on_restore
    (local $c i32) (local $found i32) (local $base i64) (local $i i32)
    (if (global.get $restored) (then (return)))
    (global.set $retrieving (i32.const 0))
    (local.set $c (call $mf (i32.const 80) (i32.const 7)))
    ;; a node that hands over the whole CallToolResult: look inside
    (if (i32.lt_s (call $field (local.get $c) (global.get $me) (i32.const 192) (i32.const 5)) (i32.const 0))
      (then
        (local.set $c (call $field (local.get $c) (global.get $me) (i32.const 208) (i32.const 17)))))
    (local.set $found (call $field (local.get $c) (global.get $me) (i32.const 192) (i32.const 5)))
    (if (i32.and (i32.ge_s (local.get $found) (i32.const 0))
                 (i32.eq (i32.load8_u (local.get $found)) (i32.const 116)))     ;; t(rue)
      (then
        (local.set $base
          (call $whole_int (call $field (local.get $c) (global.get $me) (i32.const 176) (i32.const 5))))
        (if (global.get $num_ok)
          (then (call $log (i32.const 1) (i32.const 640) (i32.const 40)))
          (else (call $log (i32.const 2) (i32.const 752) (i32.const 51)))))
      (else (call $log (i32.const 1) (i32.const 704) (i32.const 32))))
    ;; the requests counted while restoring come on top of the stored count
    (global.set $count (i64.add (local.get $base) (global.get $count)))
    (global.set $saved (local.get $base))
    (global.set $restored (i32.const 1))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (global.get $waiting)))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (call $answer (i32.sub (local.get $i) (i32.const 1)) (i32.const 256) (i32.const 6)
          (i64.add (local.get $base) (i64.extend_i32_u (local.get $i))) (i32.const 0) (i32.const 0))
        (br $next)))
    (global.set $waiting (i32.const 0))
    (call $checkpoint))

  ;; A failure from the node about one of our messages.
  (func $on_failure
    (local $c i32) (local $r i32) (local $i i32)
    (local.set $c (call $mf (i32.const 80) (i32.const 7)))
    (local.set $r (call $field (local.get $c) (global.get $me) (i32.const 112) (i32.const 8)))
    (if (call $ends (local.get $r) (call $vlen (local.get $r)) (i32.const 336) (i32.const 10))
      (then
        (call $log_with (i32.const 2) (i32.const 816) (i32.const 30) (local.get $c))
        (if (global.get $restored) (then (return)))
        (global.set $retrieving (i32.const 0))
        ;; without the stored count, no answer can be right: the waiting
        ;; requesters are told so and not counted
        (block $done
          (loop $next
            (br_if $done (i32.ge_u (local.get $i) (global.get $waiting)))
            (call $answer (local.get $i) (i32.const 272) (i32.const 7) (i64.const 0) (i32.const 592) (i32.const 30))
            (local.set $i (i32.add (local.get $i) (i32.const 1)))
            (br $next)))
        (global.set $waiting (i32.const 0))
        (global.set $count (i64.const 0))
        (return)))
    (if (call $ends (local.get $r) (call $vlen (local.get $r)) (i32.const 352) (i32.const 7))
      (then
        (call $log_with (i32.const 2) (i32.const 864) (i32.const 27) (local.get $c))
        (global.set $storing (i32.const 0))
        ;; not stored after all: the next checkpoint must send this count
        (global.set $saved (i64.const -1))
        (return)))
    (call $log_with (i32.const 2) (i32.const 896) (i32.const 23) (local.get $c)))

  (func $dispatch (result i32)
    (local $perf i32) (local $sender i32) (local $sl i32)
    (local.set $perf (call $mf (i32.const 0) (i32.const 12)))
    (if (i32.lt_s (local.get $perf) (i32.const 0)) (then (return (i32.const 1))))
    (local.set $sender (call $mf (i32.const 16) (i32.const 6)))
    (if (i32.ge_s (local.get $sender) (i32.const 0))
      (then (local.set $sl (call $vlen (local.get $sender)))))
    ;; the node's notices
    (if (call $str_is (local.get $sender) (global.get $me) (i32.const 304) (i32.const 6))
      (then
        (if (call $str_is (local.get $perf) (global.get $me) (i32.const 272) (i32.const 7))
          (then (call $on_failure))
          (else (call $log_with (i32.const 2) (i32.const 928) (i32.const 32) (global.get $m))))
        (return (i32.const 0))))
    ;; answers from MCP tools
    (if (call $starts (local.get $sender) (local.get $sl) (i32.const 320) (i32.const 5))
      (then
        (if (call $str_is (local.get $perf) (global.get $me) (i32.const 256) (i32.const 6))
          (then
            (if (call $ends (local.get $sender) (local.get $sl) (i32.const 336) (i32.const 10))
              (then (call $on_restore) (return (i32.const 0))))
            (if (call $ends (local.get $sender) (local.get $sl) (i32.const 352) (i32.const 7))
              (then
                (global.set $storing (i32.const 0))
                (call $checkpoint)
                (return (i32.const 0))))))
        (if (call $str_is (local.get $perf) (global.get $me) (i32.const 272) (i32.const 7))
          (then (call $on_failure) (return (i32.const 0))))
        (call $log_with (i32.const 2) (i32.const 928) (i32.const 32) (global.get $m))
        (return (i32.const 0))))
    (if (call $str_is (local.get $perf) (global.get $me) (i32.const 240) (i32.const 7))
      (then (return (call $on_request))))
    (call $log_with (i32.const 2) (i32.const 928) (i32.const 32) (global.get $m))
    (i32.const 0))

  ;; ---------------------------------------------------------------------
  ;; Exports
  ;; ---------------------------------------------------------------------

  (func (export "caxton_init") (param $ptr i32) (param $len i32) (result i32)
    (local $v i32) (local $n i32)
    ;; the config is scanned with the message helpers
    (global.set $m (local.get $ptr))
    (global.set $me (i32.add (local.get $ptr) (local.get $len)))
    ;; key: a JSON string, kept raw (quotes and escapes as written)
    (local.set $v (call $mf (i32.const 144) (i32.const 3)))
    (if (i32.ge_s (local.get $v) (i32.const 0))
      (then
        (local.set $n (call $vlen (local.get $v)))
        (if (i32.or (i32.ne (i32.load8_u (local.get $v)) (i32.const 34))
                    (i32.or (i32.lt_u (local.get $n) (i32.const 3)) (i32.gt_u (local.get $n) (i32.const 256))))
          (then
            (call $log (i32.const 3) (i32.const 976) (i32.const 54))
            (return (i32.const 1))))
        (memory.copy (i32.const 2304) (local.get $v) (local.get $n))
        (global.set $key_len (local.get $n)))
      (else
        (memory.copy (i32.const 2304) (i32.const 368) (i32.const 9))
        (global.set $key_len (i32.const 9))))
    ;; server: a JSON string, kept without its quotes
    (local.set $v (call $mf (i32.const 160) (i32.const 6)))
    (if (i32.ge_s (local.get $v) (i32.const 0))
      (then
        (local.set $n (call $vlen (local.get $v)))
        (if (i32.or (i32.ne (i32.load8_u (local.get $v)) (i32.const 34))
                    (i32.or (i32.lt_u (local.get $n) (i32.const 3)) (i32.gt_u (local.get $n) (i32.const 65))))
          (then
            (call $log (i32.const 3) (i32.const 1040) (i32.const 56))
            (return (i32.const 1))))
        (memory.copy (i32.const 2560) (i32.add (local.get $v) (i32.const 1)) (i32.sub (local.get $n) (i32.const 2)))
        (global.set $srv_len (i32.sub (local.get $n) (i32.const 2))))
      (else
        (memory.copy (i32.const 2560) (i32.const 384) (i32.const 5))
        (global.set $srv_len (i32.const 5))))
    (call $start_retrieve)
    (global.set $top (global.get $heap_base))
    (i32.const 0))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $r i32)
    (global.set $m (local.get $ptr))
    (global.set $me (i32.add (local.get $ptr) (local.get $len)))
    (local.set $r (call $dispatch))
    (global.set $top (global.get $heap_base))
    (local.get $r))
)
