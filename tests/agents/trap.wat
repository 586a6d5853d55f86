;; trap.wat (test-only, hostile): traps on every message.
;;
;; caxton_handle executes `unreachable`. Proves that a trap fails only the
;; message being handled (its sender gets a failure, AGENT_FAILED) and that
;; repeated traps put the agent in state `failed`.
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
    (unreachable))
)
