//! One test per fixed issue, headed by the issue it comes from.
