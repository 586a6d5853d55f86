;; bad_import.wat (test-only, invalid): imports something outside the ABI.
;;
;; It imports wasi_snapshot_preview1.fd_write next to the normal exports, so
;; deploy-time validation must refuse it with INVALID_WASM (a core module may
;; import only from module "caxton").
(module
  (import "wasi_snapshot_preview1" "fd_write"
    (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (i32.const 1024))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (i32.const 0))
)
