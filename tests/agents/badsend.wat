;; badsend.wat (test-only, hostile): sends a malformed message.
;;
;; On every message: caxton.send("{not json") (9 bytes), ignore the result,
;; return 0. Proves the host validates what agents send (the spec answers a
;; malformed message from an agent with not-understood / an error code) and
;; that the agent itself is not failed for it.
;;
;; ABI use: exports memory, caxton_alloc, caxton_handle;
;; imports caxton.send(ptr, len) -> i32.
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 2)
  (data (i32.const 0) "{not json")        ;; 0, 9
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
    (drop (call $send (i32.const 0) (i32.const 9)))
    (i32.const 0))
)
