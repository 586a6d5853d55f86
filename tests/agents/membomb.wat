;; membomb.wat (test-only, hostile): a memory bomb.
;;
;; On every message: grow memory one page (64 KiB) at a time, writing a byte
;; into every new page so it is really touched, until memory.grow returns
;; -1 (the host's memory cap refused it), then trap with `unreachable`.
;; Proves the memory cap holds and that hitting it fails only this message.
;;
;; ABI use: exports memory, caxton_alloc, caxton_handle; no imports.
;; Incoming messages go to a fixed 64 KiB buffer in page 1 (larger ones
;; get more pages).
(module
  (memory (export "memory") 2)
  (func (export "caxton_alloc") (param $len i32) (result i32)
    (local $need i32)
    ;; make sure [65536, 65536+len) exists
    (local.set $need
      (i32.sub
        (i32.shr_u (i32.add (i32.add (local.get $len) (i32.const 65536)) (i32.const 65535)) (i32.const 16))
        (memory.size)))
    (if (i32.gt_s (local.get $need) (i32.const 0))
      (then
        (if (i32.eq (memory.grow (local.get $need)) (i32.const -1)) (then (unreachable)))))
    (i32.const 65536))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (local $old i32)
    (loop $more
      (local.set $old (memory.grow (i32.const 1)))
      (if (i32.ne (local.get $old) (i32.const -1))
        (then
          ;; touch the new page
          (i32.store8 (i32.shl (local.get $old) (i32.const 16)) (i32.const 1))
          (br $more))))
    (unreachable))
)
