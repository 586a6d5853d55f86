;; Hostile test component: imports the host interface with a wrong type
;; (now-ms taking a u32). Calling it would make the host function raise on
;; every call; the node must refuse it at deploy with INVALID_WASM naming
;; the function.
(component
  (import "caxton:agent/host@0.1.0" (instance $host
    (export "now-ms" (func (param "x" u32) (result s64)))
  ))
  (core module $m
    (import "host" "now-ms" (func $now (param i32) (result i64)))
    (memory (export "memory") 1)
    (func (export "realloc") (param i32 i32 i32 i32) (result i32) i32.const 1024)
    (func (export "handle") (param i32 i32) (result i32)
      (drop (call $now (i32.const 5)))
      i32.const 2048)
    (func (export "init") (param i32 i32) (result i32)
      i32.const 2048)
  )
  (core func $now (canon lower (func $host "now-ms")))
  (core instance $hi (export "now-ms" (func $now)))
  (core instance $i (instantiate $m (with "host" (instance $hi))))
  (func (export "handle") (param "message" string) (result (result (error string)))
    (canon lift (core func $i "handle") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
  (func (export "init") (param "config" string) (result (result (error string)))
    (canon lift (core func $i "init") (memory (core memory $i "memory")) (realloc (core func $i "realloc"))))
)
