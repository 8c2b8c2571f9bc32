"""The contract in code: every API body, event payload and topic name of reelstream.

Nothing here imports anything of ours; everything else imports from here.
"""
