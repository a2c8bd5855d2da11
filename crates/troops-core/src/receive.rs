//! What the node accepts from a push (pre-receive): the checks on each updated ref.
