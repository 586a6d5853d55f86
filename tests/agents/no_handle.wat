;; no_handle.wat (test-only, invalid): lacks the required caxton_handle export.
;;
;; Exports memory and caxton_alloc only, so deploy-time validation must
;; refuse it with INVALID_WASM.
(module
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (i32.const 1024))
)
