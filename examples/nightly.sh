#!/bin/sh
# A shell script that must not run twice at once across hosts: it skips (exit 0) when another
# host holds the lock, and passes every other outcome on.
set -u
export PGLOCK_KEY=billing-export
# PGLOCK_DATABASE_URL, DATABASE_URL or the PG* variables say where the database is.

pglock run --no-wait --max-runtime 1h -- ./export.sh
rc=$?
case $rc in
  0)   echo "export done" ;;
  75)  echo "another host is exporting; skipped"; rc=0 ;;
  74)  echo "the lock was lost while exporting; the export was stopped" >&2 ;;
  124) echo "the export ran over an hour and was stopped" >&2 ;;
  69)  echo "the database is unavailable" >&2 ;;
  *)   echo "the export failed with status $rc" >&2 ;;
esac
exit $rc
