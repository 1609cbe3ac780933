//! What a failed statement means for whoever ran it, read from the error's SQLSTATE (never
//! from its message, which the server translates into the language of its `lc_messages`).
//!
//! | kind | SQLSTATE | what happened |
//! | --- | --- | --- |
//! | [`Failure::Unavailable`] | no code (`ClosedConnection`, `UnableToSendCommand`) | the connection broke |
//! | | class `08` (connection exception) | the connection failed; poolers (PgBouncer) report their own refusals here too (`query_wait_timeout`, no server) |
//! | | `57014` query_canceled | `statement_timeout`, or a cancel request |
//! | | `55P03` lock_not_available | `lock_timeout`, or a `NOWAIT` lock taken |
//! | | `57P01` admin_shutdown, `57P02` crash_shutdown, `57P03` cannot_connect_now, `57P05` idle_session_timeout | the server is stopping, restarting or starting, or closed an idle session |
//! | | class `53` (insufficient resources: `53300` too_many_connections, out of memory, disk full) | the server cannot take the work now |
//! | | `25006` read_only_sql_transaction | a write reached a standby (a fail-over in progress) |
//! | [`Failure::Conflict`] | `40001` serialization_failure, `40P01` deadlock_detected | aborted for a concurrent transaction: running it again now may succeed |
//! | [`Failure::Other`] | anything else | a bug or a broken invariant |
//!
//! In every case the transaction was rolled back: nothing was committed.

use diesel::{
    pg::sql_state,
    result::{DatabaseErrorKind, Error, SqlState},
};

/// What a failed statement means; see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The database cannot serve the statement now: retry later.
    Unavailable,
    /// Aborted to keep concurrent transactions consistent: run the transaction again.
    Conflict,
    /// Anything else.
    Other,
}

impl Failure {
    /// What `error` means.
    pub fn of(error: &Error) -> Self {
        let Error::DatabaseError(kind, info) = error else {
            return Self::Other;
        };
        if matches!(
            kind,
            DatabaseErrorKind::ClosedConnection | DatabaseErrorKind::UnableToSendCommand
        ) {
            return Self::Unavailable;
        }
        info.sqlstate().map_or(Self::Other, Self::of_sqlstate)
    }

    /// What an error with SQLSTATE `code` means.
    pub fn of_sqlstate(code: SqlState) -> Self {
        match code {
            sql_state::T_R_SERIALIZATION_FAILURE | sql_state::T_R_DEADLOCK_DETECTED => {
                Self::Conflict
            }
            sql_state::QUERY_CANCELED
            | sql_state::LOCK_NOT_AVAILABLE
            | sql_state::ADMIN_SHUTDOWN
            | sql_state::CRASH_SHUTDOWN
            | sql_state::CANNOT_CONNECT_NOW
            | sql_state::IDLE_SESSION_TIMEOUT
            | sql_state::READ_ONLY_SQL_TRANSACTION => Self::Unavailable,
            // Class 08, connection exception; class 53, insufficient resources.
            _ => match code.class().as_str() {
                "08" | "53" => Self::Unavailable,
                _ => Self::Other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database error as a driver reports it: a code and a message in any language.
    struct Reported {
        code: &'static str,
        message: &'static str,
    }

    impl diesel::result::DatabaseErrorInformation for Reported {
        fn message(&self) -> &str {
            self.message
        }
        fn details(&self) -> Option<&str> {
            None
        }
        fn hint(&self) -> Option<&str> {
            None
        }
        fn table_name(&self) -> Option<&str> {
            None
        }
        fn column_name(&self) -> Option<&str> {
            None
        }
        fn constraint_name(&self) -> Option<&str> {
            None
        }
        fn statement_position(&self) -> Option<i32> {
            None
        }
        fn sqlstate(&self) -> Option<SqlState> {
            self.code.parse().ok()
        }
    }

    fn reported(code: &'static str, message: &'static str) -> Error {
        Error::DatabaseError(
            DatabaseErrorKind::Unknown,
            Box::new(Reported { code, message }),
        )
    }

    #[test]
    fn timeouts_shutdowns_and_lost_connections_are_unavailable_in_any_language() {
        for (code, message) in [
            (
                "57014",
                "storniere Anfrage wegen Zeitüberschreitung der Anfrage",
            ),
            (
                "55P03",
                "storniere Anfrage wegen Zeitüberschreitung einer Sperre",
            ),
            (
                "57P01",
                "Verbindung wird abgebrochen aufgrund von Anweisung des Administrators",
            ),
            (
                "57P02",
                "terminating connection because of crash of another server process",
            ),
            ("57P03", "das Datenbanksystem fährt herunter"),
            (
                "57P05",
                "terminating connection due to idle-session timeout",
            ),
            ("08006", "connection failure"),
            ("08P01", "query_wait_timeout"),
            ("53300", "sorry, too many clients already"),
            ("53200", "out of memory"),
            ("25006", "cannot execute INSERT in a read-only transaction"),
        ] {
            assert_eq!(
                Failure::of(&reported(code, message)),
                Failure::Unavailable,
                "{code}"
            );
        }
        let closed = Error::DatabaseError(
            DatabaseErrorKind::ClosedConnection,
            Box::new("connection closed".to_owned()),
        );
        assert_eq!(Failure::of(&closed), Failure::Unavailable);
    }

    #[test]
    fn serialization_failures_and_deadlocks_are_conflicts_in_any_language() {
        for (code, message) in [
            ("40001", "konnte Zugriff nicht serialisieren"),
            ("40P01", "Verklemmung (Deadlock) entdeckt"),
        ] {
            assert_eq!(Failure::of(&reported(code, message)), Failure::Conflict);
        }
    }

    #[test]
    fn other_errors_are_other_whatever_their_message_says() {
        for error in [
            reported("42P01", "relation \"nope\" does not exist"),
            reported("23505", "canceling statement due to lock timeout"),
            reported("XX000", "deadlock detected"),
            // No code at all (a message only, as some callers build errors).
            Error::DatabaseError(
                DatabaseErrorKind::Unknown,
                Box::new("canceling statement due to statement timeout".to_owned()),
            ),
            Error::NotFound,
            Error::RollbackTransaction,
        ] {
            assert_eq!(Failure::of(&error), Failure::Other, "{error}");
        }
    }
}
