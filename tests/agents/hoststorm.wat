;; Hostile test agent: a host-call storm.
;;
;; While handling a message it calls now_ms and log in a loop that never
;; ends. Fuel counts only guest instructions, so it is the wall-clock limit
;; (epoch interruption, checked in the loop) that stops it; the node keeps
;; at most max_sends of its log lines per message.
(module
  (import "caxton" "now_ms" (func $now (result i64)))
  (import "caxton" "log" (func $log (param i32 i32 i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "storm")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    (loop $again
      (drop (call $now))
      (call $log (i32.const 0) (i32.const 16) (i32.const 5))
      (br $again))
    i32.const 0))
