;; clock.wat: tells the time.
;;
;; Behaviour: for every message it logs "tick" at level info (1), reads the
;; host clock and replies `inform` with content {"now_ms":<Unix ms>}.
;; caxton_handle always returns 0.
;;
;; ABI use (Caxton agent ABI v1, core module):
;;   exports  memory, caxton_alloc, caxton_handle
;;   imports  caxton.log(level, ptr, len), caxton.now_ms() -> i64,
;;            caxton.reply(perf_ptr, perf_len, content_ptr, content_len) -> i32
;;
;; Build: python -c "import wasmtime,sys; open(sys.argv[2],'wb').write(wasmtime.wat2wasm(open(sys.argv[1]).read()))" clock.wat clock.wasm
(module
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (import "caxton" "now_ms" (func $now_ms (result i64)))

  (memory (export "memory") 2)

  (data (i32.const 0) "inform")           ;; 0, 6
  (data (i32.const 16) "tick")            ;; 16, 4
  (data (i32.const 32) "{\"now_ms\":")    ;; 32, 10

  ;; the reply content is built at 2048
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

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (call $log (i32.const 1) (i32.const 16) (i32.const 4))
    (global.set $o (i32.const 2048))
    (call $w (i32.const 32) (i32.const 10))
    (call $wint (call $now_ms))
    (call $wb (i32.const 125))            ;; }
    (drop (call $reply (i32.const 0) (i32.const 6)
                       (i32.const 2048) (i32.sub (global.get $o) (i32.const 2048))))
    (global.set $top (global.get $heap_base))
    (i32.const 0))
)
