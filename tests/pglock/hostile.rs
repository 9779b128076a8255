//! A hostile fake server and man in the middle (issue 12): one test per finding, each ending with
//! a one-line error and exit code within a second, never a panic, never the child run.
