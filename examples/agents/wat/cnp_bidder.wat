;; cnp_bidder.wat: a FIPA contract-net participant with a fixed price.
;;
;; Behaviour:
;;   caxton_init  config {"price": N} (an integer; 100 when absent or not a
;;                number). Any other config members are ignored.
;;   cfp              -> reply `propose` {"price":N}
;;   accept-proposal  -> reply `inform`  {"done":true,"price":N}
;;   reject-proposal  -> nothing (returns 0)
;;   anything else    -> reply `not-understood` {"reason":"unexpected"},
;;                       except notices from the node itself (sender
;;                       "caxton") and `not-understood` messages, which are
;;                       ignored so that two agents can never bounce
;;                       not-understood at each other forever.
;; caxton_handle returns 0 for every message it could read and 1 for a
;; message without a `performative` (which the node never delivers).
;;
;; ABI use (Caxton agent ABI v1, core module):
;;   exports  memory, caxton_alloc, caxton_handle, caxton_init
;;   imports  caxton.reply(perf_ptr, perf_len, content_ptr, content_len) -> i32
;;   Replies go through `reply`, so the host fills in receiver,
;;   conversation_id, in_reply_to and protocol (fipa-contract-net).
;;
;; Build: python -c "import wasmtime,sys; open(sys.argv[2],'wb').write(wasmtime.wat2wasm(open(sys.argv[1]).read()))" cnp_bidder.wat cnp_bidder.wasm
(module
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  ;; Constants (offset, length). Page 0 layout: constants 0..1023, number
  ;; scratch 1024..1055, reply content built at 2048; heap from 65536.
  (data (i32.const 0) "performative")                       ;; 0, 12
  (data (i32.const 16) "sender")                            ;; 16, 6
  (data (i32.const 32) "price")                             ;; 32, 5
  (data (i32.const 48) "cfp")                               ;; 48, 3
  (data (i32.const 64) "accept-proposal")                   ;; 64, 15
  (data (i32.const 80) "reject-proposal")                   ;; 80, 15
  (data (i32.const 96) "propose")                           ;; 96, 7
  (data (i32.const 112) "inform")                           ;; 112, 6
  (data (i32.const 128) "not-understood")                   ;; 128, 14
  (data (i32.const 144) "caxton")                           ;; 144, 6
  (data (i32.const 160) "{\"reason\":\"unexpected\"}")      ;; 160, 23
  (data (i32.const 192) "{\"price\":")                      ;; 192, 9
  (data (i32.const 208) "{\"done\":true,\"price\":")        ;; 208, 21

  (global $price (mut i64) (i64.const 100))
  (global $num_ok (mut i32) (i32.const 0))
  (global $o (mut i32) (i32.const 0))

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
  ;; Agent
  ;; ---------------------------------------------------------------------

  (func (export "caxton_init") (param $ptr i32) (param $len i32) (result i32)
    (local $e i32) (local $n i64)
    (local.set $e (i32.add (local.get $ptr) (local.get $len)))
    (local.set $n
      (call $parse_int
        (call $field (local.get $ptr) (local.get $e) (i32.const 32) (i32.const 5))
        (local.get $e)))
    (if (global.get $num_ok) (then (global.set $price (local.get $n))))
    (global.set $top (global.get $heap_base))
    (i32.const 0))

  ;; reply(perf, prefix + price + "}")
  (func $reply_price (param $perf i32) (param $perf_len i32) (param $pre i32) (param $pre_len i32)
    (global.set $o (i32.const 2048))
    (call $w (local.get $pre) (local.get $pre_len))
    (call $wint (global.get $price))
    (call $wb (i32.const 125))
    (drop (call $reply (local.get $perf) (local.get $perf_len)
                       (i32.const 2048) (i32.sub (global.get $o) (i32.const 2048)))))

  (func $handle (param $ptr i32) (param $len i32) (result i32)
    (local $e i32) (local $perf i32)
    (local.set $e (i32.add (local.get $ptr) (local.get $len)))
    (local.set $perf (call $field (local.get $ptr) (local.get $e) (i32.const 0) (i32.const 12)))
    (if (i32.lt_s (local.get $perf) (i32.const 0)) (then (return (i32.const 1))))
    (if (call $str_is (local.get $perf) (local.get $e) (i32.const 48) (i32.const 3))
      (then
        (call $reply_price (i32.const 96) (i32.const 7) (i32.const 192) (i32.const 9))
        (return (i32.const 0))))
    (if (call $str_is (local.get $perf) (local.get $e) (i32.const 64) (i32.const 15))
      (then
        (call $reply_price (i32.const 112) (i32.const 6) (i32.const 208) (i32.const 21))
        (return (i32.const 0))))
    (if (call $str_is (local.get $perf) (local.get $e) (i32.const 80) (i32.const 15))
      (then (return (i32.const 0))))
    (if (call $str_is (local.get $perf) (local.get $e) (i32.const 128) (i32.const 14))
      (then (return (i32.const 0))))
    (if (call $str_is (call $field (local.get $ptr) (local.get $e) (i32.const 16) (i32.const 6))
                      (local.get $e) (i32.const 144) (i32.const 6))
      (then (return (i32.const 0))))
    (drop (call $reply (i32.const 128) (i32.const 14) (i32.const 160) (i32.const 23)))
    (i32.const 0))

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $r i32)
    (local.set $r (call $handle (local.get $ptr) (local.get $len)))
    (global.set $top (global.get $heap_base))
    (local.get $r))
)
