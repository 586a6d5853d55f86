;; Hostile test agent: a send flood.
;;
;; While handling one message it calls send a million times with a small
;; valid message to client:sink. The node accepts max_sends of them and
;; answers SEND_LIMIT (-3) to the rest (or the wall-clock limit ends the
;; loop first); the handler returns 0.
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"performative\":\"inform\",\"receiver\":\"client:sink\",\"content\":1}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (local $i i32)
    (loop $again
      (drop (call $send (i32.const 16) (i32.const 62)))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $again (i32.lt_u (local.get $i) (i32.const 1000000))))
    i32.const 0))
