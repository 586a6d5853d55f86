;; cnp_manager.wat: a FIPA contract-net initiator (the "manager").
;;
;; Behaviour, one round at a time:
;;   caxton_init  config {"bidders": K, "deadline_ms": D} (defaults K=3,
;;                D=500). K is how many answers end the round early; with
;;                K <= 0 only the deadline ends it.
;;   request      from a client (e.g. client:alice): remember who to answer
;;                (reply_to, else sender), the request's conversation_id and
;;                reply_with (may be absent), then `send` a cfp
;;                  {"performative":"cfp","protocol":"fipa-contract-net",
;;                   "receiver":{"capability":"bid","all":true},
;;                   "reply_by":"<now_ms()+D as RFC 3339 UTC, ms, Z>",
;;                   "content":{"task":<the request's content, or null>}}
;;                without a conversation_id (the node assigns one; we learn
;;                it from the first answer). While a round is open further
;;                requests are answered `refuse` {"reason":"busy"}.
;;   propose {"price":N}, refuse, or failure from a bidder
;;                each counts as one answer (answers from another
;;                conversation are ignored); proposals are remembered (the
;;                first 32 proposers by name) and the cheapest one kept
;;                (first one wins a tie). After K answers: decide.
;;   failure from "caxton" with reason TIMEOUT (or AGENT_NOT_FOUND: nobody
;;                offers "bid") while collecting: decide with what arrived.
;;   decide (once per round): `send` accept-proposal {"price":best} to the
;;                cheapest proposer and reject-proposal {"reason":"price"} to
;;                every other proposer, all with protocol fipa-contract-net
;;                and the cfp's conversation_id. With no proposal at all the
;;                requester gets a `failure` {"reason":"no-bids"} instead.
;;   inform from the winner
;;                `send` the requester an inform
;;                {"winner":"<name>","price":N} in the requester's
;;                conversation, in_reply_to = the request's reply_with (when
;;                it had one), protocol fipa-request. The round is over.
;;   failure from the winner
;;                the requester gets `failure` {"reason":"contractor-failed"}.
;;   anything else is logged at warn and ignored (returns 0).
;; caxton_handle returns 1 only for a message it cannot use at all (no
;; performative, or a requester name/conversation id over 256 bytes).
;;
;; ABI use (Caxton agent ABI v1, core module):
;;   exports  memory, caxton_alloc, caxton_handle, caxton_init
;;   imports  caxton.send(ptr, len) -> i32        whole ACL messages (JSON)
;;            caxton.reply(perf, perf_len, content, content_len) -> i32
;;            caxton.log(level, ptr, len)           info and warn lines
;;            caxton.now_ms() -> i64                for the cfp's reply_by
;;   The host sets `sender` on everything we send to our own name.
;;
;; Memory (page 0): constants 0..1023, number scratch 1024..1055,
;; requester 2048 (256), request conversation_id 2304 (256), request
;; reply_with 2560 (256), cfp conversation_id 2816 (256), winner 3072 (256),
;; proposers 4096 + i*256 (32 x 256) with lengths at 12288 + i*4, small
;; outgoing messages built at 16384. Strings are kept as raw JSON values
;; (quotes included) so they can be copied into messages as they are.
;; The heap (incoming messages, the cfp) starts at 65536.
;;
;; Build: python -c "import wasmtime,sys; open(sys.argv[2],'wb').write(wasmtime.wat2wasm(open(sys.argv[1]).read()))" cnp_manager.wat cnp_manager.wasm
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (import "caxton" "now_ms" (func $now_ms (result i64)))

  (memory (export "memory") 2)

  ;; Constants (offset, length)
  (data (i32.const 0) "performative")                           ;; 0, 12
  (data (i32.const 16) "sender")                                ;; 16, 6
  (data (i32.const 32) "conversation_id")                       ;; 32, 15
  (data (i32.const 48) "reply_with")                            ;; 48, 10
  (data (i32.const 64) "reply_to")                              ;; 64, 8
  (data (i32.const 80) "content")                               ;; 80, 7
  (data (i32.const 96) "price")                                 ;; 96, 5
  (data (i32.const 112) "reason")                               ;; 112, 6
  (data (i32.const 128) "receiver")                             ;; 128, 8
  (data (i32.const 144) "in_reply_to")                          ;; 144, 11
  (data (i32.const 160) "reply_by")                             ;; 160, 8
  (data (i32.const 176) "bidders")                              ;; 176, 7
  (data (i32.const 192) "deadline_ms")                          ;; 192, 11
  (data (i32.const 208) "request")                              ;; 208, 7
  (data (i32.const 224) "propose")                              ;; 224, 7
  (data (i32.const 240) "refuse")                               ;; 240, 6
  (data (i32.const 256) "failure")                              ;; 256, 7
  (data (i32.const 272) "inform")                               ;; 272, 6
  (data (i32.const 288) "cfp")                                  ;; 288, 3
  (data (i32.const 304) "accept-proposal")                      ;; 304, 15
  (data (i32.const 320) "reject-proposal")                      ;; 320, 15
  (data (i32.const 336) "caxton")                               ;; 336, 6
  (data (i32.const 352) "TIMEOUT")                              ;; 352, 7
  (data (i32.const 368) "AGENT_NOT_FOUND")                      ;; 368, 15
  (data (i32.const 384) "fipa-contract-net")                    ;; 384, 17
  (data (i32.const 416) "fipa-request")                         ;; 416, 12
  (data (i32.const 432) "{\"performative\":\"")                 ;; 432, 17
  (data (i32.const 464) "\",\"protocol\":\"")                   ;; 464, 14
  (data (i32.const 480) "{\"capability\":\"bid\",\"all\":true}") ;; 480, 31
  (data (i32.const 512) "{\"task\":")                           ;; 512, 8
  (data (i32.const 528) "null")                                 ;; 528, 4
  (data (i32.const 544) "{\"price\":")                          ;; 544, 9
  (data (i32.const 560) "{\"reason\":\"price\"}")               ;; 560, 18
  (data (i32.const 592) "{\"reason\":\"no-bids\"}")             ;; 592, 20
  (data (i32.const 624) "{\"reason\":\"busy\"}")                ;; 624, 17
  (data (i32.const 656) "{\"reason\":\"contractor-failed\"}")   ;; 656, 30
  (data (i32.const 688) "{\"reason\":\"cfp-not-sent\"}")        ;; 688, 25
  (data (i32.const 720) "{\"winner\":")                         ;; 720, 10
  (data (i32.const 736) ",\"price\":")                          ;; 736, 9
  (data (i32.const 752) "cfp sent")                             ;; 752, 8
  (data (i32.const 768) "awarding contract")                    ;; 768, 17
  (data (i32.const 800) "ignoring unexpected message")          ;; 800, 27
  (data (i32.const 832) "contract done")                        ;; 832, 13

  ;; configuration
  (global $k (mut i32) (i32.const 3))
  (global $deadline (mut i64) (i64.const 500))
  ;; round state: 0 idle, 1 collecting answers, 2 awaiting the winner's inform
  (global $state (mut i32) (i32.const 0))
  (global $responses (mut i32) (i32.const 0))
  (global $nprop (mut i32) (i32.const 0))
  (global $has_best (mut i32) (i32.const 0))
  (global $best (mut i64) (i64.const 0))
  (global $best_idx (mut i32) (i32.const -1))
  ;; lengths of the saved raw values (0 = absent)
  (global $rq_len (mut i32) (i32.const 0))
  (global $rc_len (mut i32) (i32.const 0))
  (global $rw_len (mut i32) (i32.const 0))
  (global $cc_len (mut i32) (i32.const 0))
  (global $w_len (mut i32) (i32.const 0))
  ;; the message being handled: [$m, $me)
  (global $m (mut i32) (i32.const 0))
  (global $me (mut i32) (i32.const 0))
  ;; output: start of the message being built, and the write cursor
  (global $out (mut i32) (i32.const 0))
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
  ;; exponent is ignored). Sets $num_ok to 1 if at least one digit was read.
  (func $parse_int (param $v i32) (param $e i32) (result i64)
    (local $neg i32) (local $n i64) (local $c i32)
    (global.set $num_ok (i32.const 0))
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i64.const 0))))
    (if (i32.lt_u (local.get $v) (local.get $e))
      (then
        (if (i32.eq (i32.load8_u (local.get $v)) (i32.const 45))
          (then
            (local.set $neg (i32.const 1))
            (local.set $v (i32.add (local.get $v) (i32.const 1)))))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $v) (local.get $e)))
        (local.set $c (i32.sub (i32.load8_u (local.get $v)) (i32.const 48)))
        (br_if $done (i32.gt_u (local.get $c) (i32.const 9)))
        (local.set $n (i64.add (i64.mul (local.get $n) (i64.const 10)) (i64.extend_i32_u (local.get $c))))
        (global.set $num_ok (i32.const 1))
        (local.set $v (i32.add (local.get $v) (i32.const 1)))
        (br $next)))
    (if (result i64) (local.get $neg)
      (then (i64.sub (i64.const 0) (local.get $n)))
      (else (local.get $n))))
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
    ;; digits are produced backwards into the scratch area [1024, 1056)
    (local.set $p (i32.const 1056))
    (loop $next
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $next (i64.ne (local.get $n) (i64.const 0))))
    (call $w (local.get $p) (i32.sub (i32.const 1056) (local.get $p))))
  ;; ---------------------------------------------------------------------
  ;; RFC 3339 UTC timestamps from Unix milliseconds:
  ;; YYYY-MM-DDTHH:MM:SS.mmmZ, using Howard Hinnant's civil_from_days
  ;; (http://howardhinnant.github.io/date_algorithms.html#civil_from_days),
  ;; valid for the whole proleptic Gregorian calendar; years 0..9999 are
  ;; written with four digits.
  ;; ---------------------------------------------------------------------

  ;; n (>= 0) as exactly $width decimal digits, zero-padded.
  (func $wpad (param $n i64) (param $width i32)
    (local $p i32)
    (local.set $p (i32.add (global.get $o) (local.get $width)))
    (loop $next
      (local.set $p (i32.sub (local.get $p) (i32.const 1)))
      (i32.store8 (local.get $p)
        (i32.add (i32.const 48) (i32.wrap_i64 (i64.rem_u (local.get $n) (i64.const 10)))))
      (local.set $n (i64.div_u (local.get $n) (i64.const 10)))
      (br_if $next (i32.gt_u (local.get $p) (global.get $o))))
    (global.set $o (i32.add (global.get $o) (local.get $width))))

  (func $wdate (param $ms i64)
    (local $days i64) (local $msd i64) (local $z i64) (local $era i64) (local $doe i64)
    (local $yoe i64) (local $y i64) (local $doy i64) (local $mp i64) (local $d i64) (local $m i64)
    ;; floor division of ms by one day; $msd is the millisecond of the day
    (local.set $days (i64.div_s (local.get $ms) (i64.const 86400000)))
    (local.set $msd (i64.rem_s (local.get $ms) (i64.const 86400000)))
    (if (i64.lt_s (local.get $msd) (i64.const 0))
      (then
        (local.set $days (i64.sub (local.get $days) (i64.const 1)))
        (local.set $msd (i64.add (local.get $msd) (i64.const 86400000)))))
    ;; z = days + 719468 (days since 0000-03-01)
    (local.set $z (i64.add (local.get $days) (i64.const 719468)))
    ;; era = (z >= 0 ? z : z - 146096) / 146097
    (local.set $era
      (i64.div_s
        (select (local.get $z) (i64.sub (local.get $z) (i64.const 146096))
                (i64.ge_s (local.get $z) (i64.const 0)))
        (i64.const 146097)))
    ;; doe = z - era * 146097                                   [0, 146096]
    (local.set $doe (i64.sub (local.get $z) (i64.mul (local.get $era) (i64.const 146097))))
    ;; yoe = (doe - doe/1460 + doe/36524 - doe/146096) / 365   [0, 399]
    (local.set $yoe
      (i64.div_s
        (i64.sub
          (i64.add
            (i64.sub (local.get $doe) (i64.div_s (local.get $doe) (i64.const 1460)))
            (i64.div_s (local.get $doe) (i64.const 36524)))
          (i64.div_s (local.get $doe) (i64.const 146096)))
        (i64.const 365)))
    ;; y = yoe + era * 400
    (local.set $y (i64.add (local.get $yoe) (i64.mul (local.get $era) (i64.const 400))))
    ;; doy = doe - (365*yoe + yoe/4 - yoe/100)                  [0, 365]
    (local.set $doy
      (i64.sub (local.get $doe)
        (i64.sub
          (i64.add (i64.mul (i64.const 365) (local.get $yoe)) (i64.div_s (local.get $yoe) (i64.const 4)))
          (i64.div_s (local.get $yoe) (i64.const 100)))))
    ;; mp = (5*doy + 2) / 153                                   [0, 11], March = 0
    (local.set $mp
      (i64.div_s (i64.add (i64.mul (i64.const 5) (local.get $doy)) (i64.const 2)) (i64.const 153)))
    ;; d = doy - (153*mp + 2)/5 + 1                             [1, 31]
    (local.set $d
      (i64.add
        (i64.sub (local.get $doy)
          (i64.div_s (i64.add (i64.mul (i64.const 153) (local.get $mp)) (i64.const 2)) (i64.const 5)))
        (i64.const 1)))
    ;; m = mp < 10 ? mp + 3 : mp - 9                            [1, 12]
    (local.set $m
      (select (i64.add (local.get $mp) (i64.const 3)) (i64.sub (local.get $mp) (i64.const 9))
              (i64.lt_s (local.get $mp) (i64.const 10))))
    ;; January and February belong to the next civil year
    (if (i64.le_s (local.get $m) (i64.const 2))
      (then (local.set $y (i64.add (local.get $y) (i64.const 1)))))
    (if (i32.and (i64.ge_s (local.get $y) (i64.const 0)) (i64.le_s (local.get $y) (i64.const 9999)))
      (then (call $wpad (local.get $y) (i32.const 4)))
      (else (call $wint (local.get $y))))
    (call $wb (i32.const 45))                                   ;; -
    (call $wpad (local.get $m) (i32.const 2))
    (call $wb (i32.const 45))                                   ;; -
    (call $wpad (local.get $d) (i32.const 2))
    (call $wb (i32.const 84))                                   ;; T
    (call $wpad (i64.div_u (local.get $msd) (i64.const 3600000)) (i32.const 2))
    (call $wb (i32.const 58))                                   ;; :
    (call $wpad (i64.rem_u (i64.div_u (local.get $msd) (i64.const 60000)) (i64.const 60)) (i32.const 2))
    (call $wb (i32.const 58))                                   ;; :
    (call $wpad (i64.rem_u (i64.div_u (local.get $msd) (i64.const 1000)) (i64.const 60)) (i32.const 2))
    (call $wb (i32.const 46))                                   ;; .
    (call $wpad (i64.rem_u (local.get $msd) (i64.const 1000)) (i32.const 3))
    (call $wb (i32.const 90)))                                  ;; Z

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

  ;; Does the sender of the message being handled equal the saved winner?
  (func $from_winner (result i32)
    (local $v i32)
    (local.set $v (call $mf (i32.const 16) (i32.const 6)))
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i32.const 0))))
    (call $eq (local.get $v) (call $vlen (local.get $v)) (i32.const 3072) (global.get $w_len)))

  ;; Is the message in the cfp's conversation (or is that still unknown)?
  (func $conv_ok (result i32)
    (local $v i32)
    (if (i32.eqz (global.get $cc_len)) (then (return (i32.const 1))))
    (local.set $v (call $mf (i32.const 32) (i32.const 15)))
    (if (i32.lt_s (local.get $v) (i32.const 0)) (then (return (i32.const 0))))
    (call $eq (local.get $v) (call $vlen (local.get $v)) (i32.const 2816) (global.get $cc_len)))

  ;; Start an outgoing message: {"performative":"<perf>","protocol":"<proto>"
  ;; Small messages are built at 16384; $extra > 0 bytes of copied content
  ;; get a heap buffer instead.
  (func $begin (param $perf i32) (param $pl i32) (param $proto i32) (param $prl i32) (param $extra i32)
    (if (local.get $extra)
      (then (global.set $out (call $alloc (i32.add (local.get $extra) (i32.const 4096)))))
      (else (global.set $out (i32.const 16384))))
    (global.set $o (global.get $out))
    (call $w (i32.const 432) (i32.const 17))
    (call $w (local.get $perf) (local.get $pl))
    (call $w (i32.const 464) (i32.const 14))
    (call $w (local.get $proto) (local.get $prl))
    (call $wb (i32.const 34)))

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

  ;; Close the message and send it; returns send's result.
  (func $finish (result i32)
    (call $wb (i32.const 125))
    (call $send (global.get $out) (i32.sub (global.get $o) (global.get $out))))

  ;; Send the requester <perf> with fixed JSON content, in its conversation.
  (func $to_requester (param $perf i32) (param $pl i32) (param $c i32) (param $cl i32)
    (call $begin (local.get $perf) (local.get $pl) (i32.const 416) (i32.const 12) (i32.const 0))
    (call $wfield (i32.const 128) (i32.const 8) (i32.const 2048) (global.get $rq_len))
    (call $wfield (i32.const 32) (i32.const 15) (i32.const 2304) (global.get $rc_len))
    (call $wfield (i32.const 144) (i32.const 11) (i32.const 2560) (global.get $rw_len))
    (call $wkey (i32.const 80) (i32.const 7))
    (call $w (local.get $c) (local.get $cl))
    (drop (call $finish)))

  (func $log_unexpected
    (call $log (i32.const 2) (i32.const 800) (i32.const 27)))

  ;; ---------------------------------------------------------------------
  ;; Contract net
  ;; ---------------------------------------------------------------------

  (func $decide
    (local $i i32)
    (if (i32.ne (global.get $state) (i32.const 1)) (then (return)))
    (if (i32.eqz (global.get $has_best))
      (then
        (call $to_requester (i32.const 256) (i32.const 7) (i32.const 592) (i32.const 20))
        (global.set $state (i32.const 0))
        (return)))
    (call $log (i32.const 1) (i32.const 768) (i32.const 17))
    (global.set $state (i32.const 2))
    ;; accept-proposal {"price":best} to the winner
    (call $begin (i32.const 304) (i32.const 15) (i32.const 384) (i32.const 17) (i32.const 0))
    (call $wfield (i32.const 32) (i32.const 15) (i32.const 2816) (global.get $cc_len))
    (call $wfield (i32.const 128) (i32.const 8) (i32.const 3072) (global.get $w_len))
    (call $wkey (i32.const 80) (i32.const 7))
    (call $w (i32.const 544) (i32.const 9))
    (call $wint (global.get $best))
    (call $wb (i32.const 125))
    (if (i32.ne (call $finish) (i32.const 0))
      (then
        (call $to_requester (i32.const 256) (i32.const 7) (i32.const 656) (i32.const 30))
        (global.set $state (i32.const 0))))
    ;; reject-proposal {"reason":"price"} to every other proposer
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (global.get $nprop)))
        (if (i32.ne (local.get $i) (global.get $best_idx))
          (then
            (call $begin (i32.const 320) (i32.const 15) (i32.const 384) (i32.const 17) (i32.const 0))
            (call $wfield (i32.const 32) (i32.const 15) (i32.const 2816) (global.get $cc_len))
            (call $wfield (i32.const 128) (i32.const 8)
              (i32.add (i32.const 4096) (i32.shl (local.get $i) (i32.const 8)))
              (i32.load (i32.add (i32.const 12288) (i32.shl (local.get $i) (i32.const 2)))))
            (call $wkey (i32.const 80) (i32.const 7))
            (call $w (i32.const 560) (i32.const 18))
            (drop (call $finish))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))

  (func $on_request (result i32)
    (local $v i32) (local $n i32) (local $c i32) (local $cl i32)
    (if (global.get $state)
      (then
        (drop (call $reply (i32.const 240) (i32.const 6) (i32.const 624) (i32.const 17)))
        (return (i32.const 0))))
    ;; who gets the answer: reply_to if present, else the sender
    (local.set $v (call $mf (i32.const 64) (i32.const 8)))
    (if (i32.lt_s (local.get $v) (i32.const 0))
      (then (local.set $v (call $mf (i32.const 16) (i32.const 6)))))
    (local.set $n (call $save (local.get $v) (i32.const 2048) (i32.const 256)))
    (if (i32.le_s (local.get $n) (i32.const 0)) (then (return (i32.const 1))))
    (global.set $rq_len (local.get $n))
    (local.set $n (call $save (call $mf (i32.const 32) (i32.const 15)) (i32.const 2304) (i32.const 256)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 1))))
    (global.set $rc_len (local.get $n))
    (local.set $n (call $save (call $mf (i32.const 48) (i32.const 10)) (i32.const 2560) (i32.const 256)))
    (if (i32.lt_s (local.get $n) (i32.const 0)) (then (return (i32.const 1))))
    (global.set $rw_len (local.get $n))
    ;; a new round
    (global.set $responses (i32.const 0))
    (global.set $nprop (i32.const 0))
    (global.set $has_best (i32.const 0))
    (global.set $best_idx (i32.const -1))
    (global.set $cc_len (i32.const 0))
    (global.set $w_len (i32.const 0))
    ;; the cfp's task is the request's content (null when it has none)
    (local.set $c (call $mf (i32.const 80) (i32.const 7)))
    (if (i32.ge_s (local.get $c) (i32.const 0))
      (then (local.set $cl (call $vlen (local.get $c))))
      (else (local.set $c (i32.const 528)) (local.set $cl (i32.const 4))))
    (call $begin (i32.const 288) (i32.const 3) (i32.const 384) (i32.const 17) (local.get $cl))
    (call $wfield (i32.const 128) (i32.const 8) (i32.const 480) (i32.const 31))
    (call $wkey (i32.const 160) (i32.const 8))
    (call $wb (i32.const 34))
    (call $wdate (i64.add (call $now_ms) (global.get $deadline)))
    (call $wb (i32.const 34))
    (call $wkey (i32.const 80) (i32.const 7))
    (call $w (i32.const 512) (i32.const 8))
    (call $w (local.get $c) (local.get $cl))
    (call $wb (i32.const 125))
    (if (i32.ne (call $finish) (i32.const 0))
      (then
        (drop (call $reply (i32.const 256) (i32.const 7) (i32.const 688) (i32.const 25)))
        (return (i32.const 0))))
    (global.set $state (i32.const 1))
    (call $log (i32.const 1) (i32.const 752) (i32.const 8))
    (i32.const 0))

  ;; propose ($is_prop = 1), refuse or a bidder's failure ($is_prop = 0)
  (func $on_answer (param $is_prop i32) (result i32)
    (local $n i32) (local $price i64) (local $slot i32) (local $sender i32)
    (if (i32.ne (global.get $state) (i32.const 1))
      (then (call $log_unexpected) (return (i32.const 0))))
    (if (i32.eqz (global.get $cc_len))
      (then
        ;; the first answer tells us the cfp's conversation_id
        (local.set $n (call $save (call $mf (i32.const 32) (i32.const 15)) (i32.const 2816) (i32.const 256)))
        (if (i32.gt_s (local.get $n) (i32.const 0)) (then (global.set $cc_len (local.get $n)))))
      (else
        (if (i32.eqz (call $conv_ok))
          (then (call $log_unexpected) (return (i32.const 0))))))
    (global.set $responses (i32.add (global.get $responses) (i32.const 1)))
    (if (local.get $is_prop)
      (then
        (local.set $price
          (call $parse_int
            (call $field (call $mf (i32.const 80) (i32.const 7)) (global.get $me) (i32.const 96) (i32.const 5))
            (global.get $me)))
        (if (global.get $num_ok)
          (then
            (local.set $sender (call $mf (i32.const 16) (i32.const 6)))
            ;; remember the proposer (first 32)
            (local.set $slot (global.get $nprop))
            (if (i32.lt_u (local.get $slot) (i32.const 32))
              (then
                (local.set $n
                  (call $save (local.get $sender)
                    (i32.add (i32.const 4096) (i32.shl (local.get $slot) (i32.const 8))) (i32.const 256)))
                (if (i32.gt_s (local.get $n) (i32.const 0))
                  (then
                    (i32.store (i32.add (i32.const 12288) (i32.shl (local.get $slot) (i32.const 2))) (local.get $n))
                    (global.set $nprop (i32.add (global.get $nprop) (i32.const 1))))
                  (else (local.set $slot (i32.const -1)))))
              (else (local.set $slot (i32.const -1))))
            ;; the cheapest so far?
            (if (i32.or (i32.eqz (global.get $has_best)) (i64.lt_s (local.get $price) (global.get $best)))
              (then
                (local.set $n (call $save (local.get $sender) (i32.const 3072) (i32.const 256)))
                (if (i32.gt_s (local.get $n) (i32.const 0))
                  (then
                    (global.set $w_len (local.get $n))
                    (global.set $best (local.get $price))
                    (global.set $best_idx (local.get $slot))
                    (global.set $has_best (i32.const 1))))))))))
    (if (i32.and (i32.gt_s (global.get $k) (i32.const 0))
                 (i32.ge_s (global.get $responses) (global.get $k)))
      (then (call $decide)))
    (i32.const 0))

  (func $on_failure (result i32)
    (local $reason i32)
    (if (i32.eq (global.get $state) (i32.const 1))
      (then
        (if (call $str_is (call $mf (i32.const 16) (i32.const 6)) (global.get $me) (i32.const 336) (i32.const 6))
          (then
            (local.set $reason
              (call $field (call $mf (i32.const 80) (i32.const 7)) (global.get $me) (i32.const 112) (i32.const 6)))
            (if (i32.or (call $str_is (local.get $reason) (global.get $me) (i32.const 352) (i32.const 7))
                        (call $str_is (local.get $reason) (global.get $me) (i32.const 368) (i32.const 15)))
              (then
                (if (call $conv_ok) (then (call $decide)) (else (call $log_unexpected)))
                (return (i32.const 0))))))
        ;; a bidder failed (or could not be reached): one more answer
        (return (call $on_answer (i32.const 0)))))
    (if (i32.and (i32.eq (global.get $state) (i32.const 2)) (call $from_winner))
      (then
        (call $to_requester (i32.const 256) (i32.const 7) (i32.const 656) (i32.const 30))
        (global.set $state (i32.const 0))
        (return (i32.const 0))))
    (call $log_unexpected)
    (i32.const 0))

  (func $on_inform (result i32)
    (if (i32.and (i32.eq (global.get $state) (i32.const 2)) (call $from_winner))
      (then
        (call $begin (i32.const 272) (i32.const 6) (i32.const 416) (i32.const 12) (i32.const 0))
        (call $wfield (i32.const 128) (i32.const 8) (i32.const 2048) (global.get $rq_len))
        (call $wfield (i32.const 32) (i32.const 15) (i32.const 2304) (global.get $rc_len))
        (call $wfield (i32.const 144) (i32.const 11) (i32.const 2560) (global.get $rw_len))
        (call $wkey (i32.const 80) (i32.const 7))
        (call $w (i32.const 720) (i32.const 10))
        (call $w (i32.const 3072) (global.get $w_len))
        (call $w (i32.const 736) (i32.const 9))
        (call $wint (global.get $best))
        (call $wb (i32.const 125))
        (drop (call $finish))
        (global.set $state (i32.const 0))
        (call $log (i32.const 1) (i32.const 832) (i32.const 13))
        (return (i32.const 0))))
    (call $log_unexpected)
    (i32.const 0))

  (func $dispatch (result i32)
    (local $perf i32)
    (local.set $perf (call $mf (i32.const 0) (i32.const 12)))
    (if (i32.lt_s (local.get $perf) (i32.const 0)) (then (return (i32.const 1))))
    (if (call $str_is (local.get $perf) (global.get $me) (i32.const 208) (i32.const 7))
      (then (return (call $on_request))))
    (if (call $str_is (local.get $perf) (global.get $me) (i32.const 224) (i32.const 7))
      (then (return (call $on_answer (i32.const 1)))))
    (if (call $str_is (local.get $perf) (global.get $me) (i32.const 240) (i32.const 6))
      (then (return (call $on_answer (i32.const 0)))))
    (if (call $str_is (local.get $perf) (global.get $me) (i32.const 256) (i32.const 7))
      (then (return (call $on_failure))))
    (if (call $str_is (local.get $perf) (global.get $me) (i32.const 272) (i32.const 6))
      (then (return (call $on_inform))))
    (call $log_unexpected)
    (i32.const 0))

  ;; ---------------------------------------------------------------------
  ;; Exports
  ;; ---------------------------------------------------------------------

  (func (export "caxton_init") (param $ptr i32) (param $len i32) (result i32)
    (local $e i32) (local $n i64)
    (local.set $e (i32.add (local.get $ptr) (local.get $len)))
    (local.set $n
      (call $parse_int (call $field (local.get $ptr) (local.get $e) (i32.const 176) (i32.const 7)) (local.get $e)))
    (if (global.get $num_ok) (then (global.set $k (i32.wrap_i64 (local.get $n)))))
    (local.set $n
      (call $parse_int (call $field (local.get $ptr) (local.get $e) (i32.const 192) (i32.const 11)) (local.get $e)))
    (if (global.get $num_ok) (then (global.set $deadline (local.get $n))))
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
