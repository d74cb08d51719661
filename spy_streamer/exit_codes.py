"""The process's exit codes (sysexits.h names), a contract with supervisord, systemd and operators."""
EX_OK = 0          # graceful stop
EX_SOFTWARE = 70   # a thread crashed, or threads were abandoned at the shutdown deadline
EX_LOCKED = 75     # another instance holds the data_dir lock (EX_TEMPFAIL)
EX_CONFIG = 78     # configuration, missing or rejected API key, an unsafe lock file: not worth a restart
