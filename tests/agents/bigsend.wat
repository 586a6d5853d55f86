;; Hostile test agent: tries to send a 10 MB message while handling one.
;;
;; It grows memory to hold 10 MiB, fills it with a valid JSON object padded
;; with spaces, and calls send with the whole 10 MiB. The node refuses it
;; (send returns -2, TOO_LARGE, over the agent's max_message) and the
;; handler returns that code, so its sender hears "handler returned -2".
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "{\"performative\":\"inform\",\"receiver\":\"client:sink\"}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
  (func (export "caxton_handle") (param i32 i32) (result i32)
    ;; 10 MiB + 64 KiB of memory: 161 pages more.
    (if (i32.eq (memory.grow (i32.const 161)) (i32.const -1)) (then (return (i32.const 7))))
    ;; Pad after the 50-byte JSON object up to 10 MiB with spaces.
    (memory.fill (i32.const 66) (i32.const 32) (i32.sub (i32.const 10485760) (i32.const 50)))
    (call $send (i32.const 16) (i32.const 10485760))))
