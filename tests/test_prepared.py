"""The libpq path of serving: parameters in their text form reach Postgres as the values they are."""

from __future__ import annotations

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from featureplane.online.prepared import PreparedStatements, text_param

# any text Postgres can hold (no NUL), quotes, backslashes, braces, commas and the word NULL included
TEXTS = (st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
         | st.sampled_from(['"', "\\", "{", "}", ",", "NULL", "null", " a ", "", '\\"', "{a,b}"]))


@pytest.fixture()
def statements(db):
    with db.connect(autocommit=True) as conn:
        yield PreparedStatements(conn)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])  # one connection
@given(texts=st.lists(st.none() | TEXTS, max_size=6), ints=st.lists(st.none() | st.integers(-2**63, 2**63 - 1),
                                                                      max_size=6))
def test_arrays_and_scalars_round_trip_through_postgres(statements, texts, ints):
    row = statements.rows("SELECT $1::text[], $2::bigint[], $3::text, $4::bigint, $5::bool",
                          [texts, ints, texts[0] if texts else None, ints[0] if ints else None, True])
    assert row == [(texts, ints, texts[0] if texts else None, ints[0] if ints else None, True)]


def test_a_statement_is_prepared_once_and_errors_keep_their_sqlstate(statements):
    assert statements.rows("SELECT $1::int + 1", [1]) == [(2,)]
    assert statements.rows("SELECT $1::int + 1", [41]) == [(42,)]
    with pytest.raises(psycopg.errors.DivisionByZero):
        statements.rows("SELECT 1 / $1::int", [0])
    assert statements.rows("SELECT 1 / $1::int", [1]) == [(1,)]  # the connection is usable after an error


def test_a_lost_connection_is_an_operational_error(db):
    conn = db.connect(autocommit=True)
    statements = PreparedStatements(conn)
    pid = statements.rows("SELECT pg_backend_pid()", [])[0][0]
    with db.connect(autocommit=True) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(psycopg.OperationalError):
        statements.rows("SELECT 1", [])


def test_values_without_a_text_form_are_refused():
    with pytest.raises(TypeError):
        text_param(1.5)
    with pytest.raises(TypeError):
        text_param([[1]])
