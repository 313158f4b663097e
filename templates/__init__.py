"""Label templates shipped with eslserver (Jinja2 producing layout markup).

Installed as the ``esl_templates`` package so that `importlib.resources` finds them in a
wheel as well as in a checkout.
"""
