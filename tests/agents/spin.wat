;; spin.wat (test-only, hostile): loops forever on every message.
;;
;; Proves the host's wall-clock limit: caxton_handle never returns, so only
;; epoch interruption (or fuel) can stop it. caxton_init also returns 0 at
;; once so that the agent deploys normally.
;;
;; ABI use: exports memory, caxton_alloc (fixed buffer at 1024),
;; caxton_handle, caxton_init; no imports.
(module
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (i32.const 1024))
  (func (export "caxton_init") (param $ptr i32) (param $len i32) (result i32)
    (i32.const 0))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (loop $forever
      (br $forever))
    (i32.const 0))
)
