;; echo.wat: the smallest useful Caxton agent.
;;
;; Behaviour: every message it receives is answered with an `inform` whose
;; content is the whole incoming message (the message is already a JSON
;; object, so it is valid JSON content as it stands). The host turns the
;; reply into a full ACL message: receiver (reply_to or sender),
;; conversation_id, in_reply_to (from reply_with) and protocol are filled in
;; from the message being handled. caxton_handle always returns 0.
;;
;; ABI use (Caxton agent ABI v1, core module):
;;   exports  memory, caxton_alloc(len) -> ptr, caxton_handle(ptr, len) -> i32
;;   imports  caxton.reply(perf_ptr, perf_len, content_ptr, content_len) -> i32
;;
;; Build: python -c "import wasmtime,sys; open(sys.argv[2],'wb').write(wasmtime.wat2wasm(open(sys.argv[1]).read()))" echo.wat echo.wasm
(module
  (import "caxton" "reply" (func $reply (param i32 i32 i32 i32) (result i32)))

  (memory (export "memory") 2)

  ;; offset 0, length 6
  (data (i32.const 0) "inform")

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

  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    ;; The reply's return code (0 or a negative error) is not our failure:
    ;; the host records the outcome of the reply itself.
    (drop (call $reply (i32.const 0) (i32.const 6) (local.get $ptr) (local.get $len)))
    (global.set $top (global.get $heap_base))
    (i32.const 0))
)
