;; silent.wat (test-only): handles every message by doing nothing.
;;
;; caxton_handle returns 0 without replying or sending. Useful for testing
;; timeouts (the requester's reply_by passes) and delivery bookkeeping.
;;
;; ABI use: exports memory, caxton_alloc, caxton_handle; no imports.
(module
  (memory (export "memory") 2)
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
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.const 0))
)
