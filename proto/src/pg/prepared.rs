//! Raw SQL that PostgreSQL parses and plans once per connection.
//!
//! diesel never keeps a prepared statement for SQL written with `sql_query`: such SQL may be
//! built at run time, and keeping every variant would grow each connection's cache without
//! bound. So each call sends it to be parsed and planned again, which on the hot paths cost
//! more than running it (RefreshSession spent more of PostgreSQL's time planning than
//! executing). A statement made with [`statement`] is a constant, so it is safe to keep: it is
//! prepared the first time a connection runs it and only bound and run after that, and
//! PostgreSQL moves to a generic plan after five runs when that plan costs no more.
//!
//! Binds work as on `sql_query`: `statement(SQL).bind::<Text, _>(value)`.

use diesel::{
    pg::Pg,
    query_builder::{AstPass, BoxedSqlQuery, Query, QueryFragment, QueryId, SqlQuery},
    result::QueryResult,
    serialize::ToSql,
    sql_types::HasSqlType,
};

/// A constant SQL statement, kept prepared on each connection that runs it.
#[must_use = "a statement does nothing until it is run"]
pub struct Statement<'f>(BoxedSqlQuery<'f, Pg, SqlQuery>);

/// The statement `sql`, to be bound and run like `diesel::sql_query(sql)`.
pub fn statement<'f>(sql: &'static str) -> Statement<'f> {
    Statement(diesel::sql_query(sql).into_boxed())
}

impl<'f> Statement<'f> {
    /// Binds the statement's next parameter.
    pub fn bind<ST, Value>(self, value: Value) -> Self
    where
        Pg: HasSqlType<ST>,
        Value: ToSql<ST, Pg> + Send + 'f,
        ST: Send + 'f,
    {
        Statement(self.0.bind::<ST, Value>(value))
    }
}

impl QueryFragment<Pg> for Statement<'_> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        self.0.walk_ast(pass)
    }

    // `sql_query` marks itself unsafe to keep; its text here is a constant.
    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> QueryResult<bool> {
        Ok(true)
    }
}

// No static id: the cache keys the statement by its text and its parameters' types.
impl QueryId for Statement<'_> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl Query for Statement<'_> {
    type SqlType = <BoxedSqlQuery<'static, Pg, SqlQuery> as Query>::SqlType;
}

impl<Conn> diesel_async::RunQueryDsl<Conn> for Statement<'_> {}

impl std::fmt::Debug for Statement<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement").finish_non_exhaustive()
    }
}
