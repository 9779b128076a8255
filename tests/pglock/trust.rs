//! The PostgreSQL trust boundary against the real server (issue 12): SASLprep passwords,
//! channel binding, require_auth, service files, sslrootcert=system, SAN-less certificates,
//! client key permissions.
