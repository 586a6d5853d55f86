;; ping.wat (test-only, benchmarks): the cheapest possible request/reply peer.
;;
;; request -> reply `inform` with content {} ; anything else (notably the
;; inform answers it gets when it is the one asking) -> return 0 silently.
;; The performative is found with a single top-level scan of the message
;; (not a substring search, so a nested "performative" in the content is
;; never mistaken for it).
;;
;; ABI use: exports memory, caxton_alloc, caxton_handle;
;; imports caxton.reply(perf_ptr, perf_len, content_ptr, content_len) -> i32.
(module
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "performative")      ;; 0, 12
  (data (i32.const 16) "request")          ;; 16, 7
  (data (i32.const 32) "inform")           ;; 32, 6
  (data (i32.const 48) "{}")               ;; 48, 2
  (global $num_ok (mut i32) (i32.const 0))

  ;; Incoming messages always go to the start of page 1 (one message at a
  ;; time; memory grows for messages over 64 KiB).
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (local $need i32)
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (local.get $len) (i32.const 65536)) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then (unreachable)))))
    (i32.const 65536))

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

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $e i32)
    (local.set $e (i32.add (local.get $ptr) (local.get $len)))
    (if (call $str_is
          (call $field (local.get $ptr) (local.get $e) (i32.const 0) (i32.const 12))
          (local.get $e) (i32.const 16) (i32.const 7))
      (then (drop (call $reply (i32.const 32) (i32.const 6) (i32.const 48) (i32.const 2)))))
    (i32.const 0))
)
