-- Rate-limit state is disposable: dropping it only forgets recent calls.
DROP TABLE rate_limits;
