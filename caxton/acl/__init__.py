"""
FIPA-ACL: the message model, its JSON codec and the interaction protocols.
"""
