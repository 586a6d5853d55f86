"""
Message routing inside a node: delivery, failures, dead letters, mailboxes.
"""
