;; Hostile test agent: unbounded recursion on every message.
;;
;; caxton_handle calls a function that calls itself forever, so the guest
;; runs out of wasm stack and traps (stack overflow). The node must fail
;; only this message, replace the instance and keep serving.
(module
  (memory (export "memory") 1)
  (func $deeper (param $n i32) (result i32)
    (i32.add (call $deeper (i32.add (local.get $n) (i32.const 1))) (i32.const 1)))
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (call $deeper (i32.const 0))))
