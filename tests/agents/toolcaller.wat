;; Test agent: for every `request` it receives, asks the MCP tool
;; mcp:state/store to store {"key": "k", "value": 1}, with reply-to
;; client:alice so the test reads the tool's answer in alice's mailbox.
;; Anything else (the tool's inform, the node's failures) it ignores, so a
;; refused call cannot loop.
(module
  (import "caxton" "send" (func $send (param i32 i32) (result i32)))
  (memory (export "memory") 1)
  ;; What a request starts with, as the node encodes it (performative first).
  (data (i32.const 16) "{\"performative\":\"request\"")
  (data (i32.const 64) "{\"performative\":\"request\",\"receiver\":\"mcp:state/store\",\"reply_to\":\"client:alice\",\"content\":{\"key\":\"k\",\"value\":1}}")
  (func (export "caxton_alloc") (param i32) (result i32) i32.const 1024)
  (func $starts_with_request (param $ptr i32) (param $len i32) (result i32)
    (local $i i32)
    (if (i32.lt_u (local.get $len) (i32.const 25)) (then (return (i32.const 0))))
    (block $done
      (loop $next
        (br_if $done (i32.eq (local.get $i) (i32.const 25)))
        (if (i32.ne (i32.load8_u (i32.add (local.get $ptr) (local.get $i)))
                    (i32.load8_u (i32.add (i32.const 16) (local.get $i))))
          (then (return (i32.const 0))))
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next)))
    (i32.const 1))
  (func (export "caxton_handle") (param $ptr i32) (param $len i32) (result i32)
    (if (call $starts_with_request (local.get $ptr) (local.get $len))
      (then (drop (call $send (i32.const 64) (i32.const 113)))))
    (i32.const 0)))
