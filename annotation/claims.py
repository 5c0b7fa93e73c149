"""The next-task and next-HIT claims on PostgreSQL, each one SQL statement (the hot path of a crowd arriving).

:func:`annotation.expert.services.task_next_for_rater` and :func:`annotation.crowd.services.hit_next_for_worker`
say what a claim must guarantee; their ORM code is the reference and runs on every other database (SQLite serialises
claims with its write lock). On PostgreSQL the same claim, read candidate → conditional UPDATE → INSERT, is
written here as one statement of data-modifying CTEs: the ORM spent about 0.5 ms of Python per query on
building SQL, which at 30 simultaneous claims on two cores was the difference between meeting the next-task
latency target and missing it (``benchmarks/bench_load.py``). The semantics are the ORM path's:

* the candidate row is read ``FOR UPDATE SKIP LOCKED`` in the claim's order, so simultaneous claims take
  different rows without waiting; PostgreSQL re-checks a locked row's conditions against its newest version, so
  the conditional ``UPDATE … < capacity`` that follows cannot over-fill it;
* one person's claims are serialised: a worker's by locking their row in an earlier statement (so the snapshot
  the claim reads holds everything their earlier requests committed), a rater's by the unique constraint on
  their one open assignment (see :func:`task_claim`);
* the INSERT's columns come from the model (every concrete field, Python defaults applied), so a field added to
  the model is inserted here too.
"""

from __future__ import annotations

from contextlib import nullcontext
from datetime import datetime
from functools import cache

from django.db import IntegrityError, connection, transaction
from django.db.models import Model

from .models import Assignment, CrowdAssignment, CrowdAssignmentState, CrowdWorker, Hit, HitRole, StudyRater, StudyTask


def claims_in_sql() -> bool:
    """Whether this database takes the one-statement claims (PostgreSQL); elsewhere the ORM path runs."""
    return connection.vendor == "postgresql"


def _quote(name: str) -> str:
    return connection.ops.quote_name(name)


def _columns(model: type[Model], alias: str) -> str:
    """The model's concrete columns as ``alias.column`` SQL, in ``_meta.concrete_fields`` order."""
    return ", ".join(f"{alias}.{_quote(field.column)}" for field in model._meta.concrete_fields)


def _attnames(model: type[Model]) -> list[str]:
    return [field.attname for field in model._meta.concrete_fields]


def _inserted_fields(model: type[Model], foreign_key: str) -> list:
    return [field for field in model._meta.concrete_fields if not field.primary_key and field.attname != foreign_key]


def _insert_select_sql(model: type[Model], *, from_cte: str, cte_column: str, foreign_key: str) -> str:
    """``INSERT INTO <model's table> (…) SELECT %s, …, <from_cte>.<cte_column> FROM <from_cte> RETURNING <every
    column>``: a placeholder for each field of :func:`_insert_params`, then ``foreign_key`` from the CTE's row."""
    fields = _inserted_fields(model, foreign_key)
    columns = [*(_quote(field.column) for field in fields), _quote(model._meta.get_field(foreign_key).column)]
    values = [*("%s" for _ in fields), f"{from_cte}.{_quote(cte_column)}"]
    returning = ", ".join(_quote(field.column) for field in model._meta.concrete_fields)
    return (
        f"INSERT INTO {_quote(model._meta.db_table)} ({', '.join(columns)}) SELECT {', '.join(values)} "
        f"FROM {from_cte} RETURNING {returning}"
    )


def _insert_params(instance: Model, foreign_key: str) -> list:
    """The unsaved ``instance``'s values for :func:`_insert_select_sql` (``pre_save`` applied: auto_now_add)."""
    return [
        field.get_db_prep_save(field.pre_save(instance, add=True), connection)
        for field in _inserted_fields(type(instance), foreign_key)
    ]


def task_claim(rater: StudyRater) -> StudyTask | None:
    """The task the rater holds unanswered (first in study order), else a newly claimed one, else None.

    Candidates: the study's tasks with a free place (``assigned_count < capacity``), unowned or owned by this
    rater, not assigned to them before, in study order. One statement, so outside a transaction it commits
    alone. Two claims of one rater at the same instant (a double click) may both find nothing held; the
    constraint ``one_open_assignment_per_rater`` lets only one insert, the other fails whole (its place is
    given back) and runs again, now finding the task its twin claimed.
    """
    for _ in range(3):
        try:
            # Inside a caller's transaction a savepoint keeps that transaction usable if the insert fails.
            with transaction.atomic() if connection.in_atomic_block else nullcontext():
                return _task_claim_statement(rater)
        except IntegrityError:
            continue
    raise RuntimeError(f"Rater {rater.pk}'s claims kept colliding.")


@cache
def _task_claim_sql() -> str:
    task_table, assignment_table = _quote(StudyTask._meta.db_table), _quote(Assignment._meta.db_table)
    task_columns = _columns(StudyTask, "t")
    insert = _insert_select_sql(Assignment, from_cte="claimed", cte_column="id", foreign_key="task_id")
    return f"""
        WITH held AS (
            SELECT {task_columns} FROM {assignment_table} a JOIN {task_table} t ON t.id = a.task_id
            WHERE a.rater_id = %s AND a.completed_at IS NULL
            ORDER BY t.position, t.id LIMIT 1
        ), candidate AS (
            SELECT t.id FROM {task_table} t
            WHERE NOT EXISTS (SELECT 1 FROM held)
              AND t.study_id = %s AND t.assigned_count < t.capacity
              AND (t.owner_id IS NULL OR t.owner_id = %s)
              AND NOT EXISTS (SELECT 1 FROM {assignment_table} a WHERE a.task_id = t.id AND a.rater_id = %s)
            ORDER BY t.position, t.id LIMIT 1
            FOR UPDATE OF t SKIP LOCKED
        ), claimed AS (
            UPDATE {task_table} t SET assigned_count = t.assigned_count + 1 FROM candidate
            WHERE t.id = candidate.id AND t.assigned_count < t.capacity
            RETURNING {task_columns}
        ), assigned AS ({insert})
        SELECT {_columns(StudyTask, "held")} FROM held
        UNION ALL
        SELECT {_columns(StudyTask, "claimed")} FROM claimed, assigned"""


def _task_claim_statement(rater: StudyRater) -> StudyTask | None:
    params = [rater.pk, rater.study_id, rater.pk, rater.pk, *_insert_params(Assignment(rater_id=rater.pk), "task_id")]
    with connection.cursor() as cursor:
        cursor.execute(_task_claim_sql(), params)
        row = cursor.fetchone()
    return None if row is None else StudyTask.from_db(connection.alias, _attnames(StudyTask), row)


def worker_lock(worker: CrowdWorker, now: datetime) -> tuple[bool, bool | None]:
    """Lock the worker's row until the transaction ends (serialises one worker's claims), note them as seen at
    ``now``, and read their ``(blocked, qualified)`` as of the lock."""
    with connection.cursor() as cursor:
        cursor.execute(
            f"UPDATE {_quote(CrowdWorker._meta.db_table)} SET last_seen_at = %s WHERE id = %s "
            "RETURNING blocked, qualified",
            [now, worker.pk],
        )
        row = cursor.fetchone()
    if row is None:
        raise CrowdWorker.DoesNotExist(f"No crowd worker {worker.pk}.")
    return row


def leases_expire(*, study_id: int, now: datetime, reason: str) -> int:
    """leased → returned for the study's leases that ran out by ``now``, each freeing its task HIT's place; how
    many. Concurrent callers each release a lease at most once: a row another transaction released first no longer
    matches ``state = leased`` when PostgreSQL re-checks it."""
    hit_table, assignment_table = _quote(Hit._meta.db_table), _quote(CrowdAssignment._meta.db_table)
    sql = f"""
        WITH expired AS (
            UPDATE {assignment_table} a SET state = %s, returned_at = %s, reason = %s
            WHERE a.state = %s AND a.lease_expires_at < %s
              AND a.hit_id IN (SELECT h.id FROM {hit_table} h WHERE h.study_id = %s)
            RETURNING a.hit_id
        ), freed AS (
            UPDATE {hit_table} h SET assigned_count = h.assigned_count - released.leases
            FROM (SELECT hit_id, count(*) AS leases FROM expired GROUP BY hit_id) released
            WHERE h.id = released.hit_id AND h.role = %s
        )
        SELECT count(*) FROM expired"""
    with connection.cursor() as cursor:
        cursor.execute(
            sql, [CrowdAssignmentState.RETURNED, now, reason, CrowdAssignmentState.LEASED, now, study_id, HitRole.TASK]
        )
        return cursor.fetchone()[0]


@cache
def _worker_next_sql(visit: tuple[str, ...]) -> str:
    hit_table, assignment_table = _quote(Hit._meta.db_table), _quote(CrowdAssignment._meta.db_table)
    insert = _insert_select_sql(CrowdAssignment, from_cte="claimed", cte_column="id", foreign_key="hit_id")
    return f"""
        WITH held AS (
            SELECT {_columns(CrowdAssignment, "a")} FROM {assignment_table} a
            WHERE a.worker_id = %s AND a.state = %s AND a.lease_expires_at >= %s
              {"".join(f" AND a.{_quote(key)} = %s" for key in visit)}
            ORDER BY a.leased_at, a.id LIMIT 1
        ), candidate AS (
            SELECT h.id FROM {hit_table} h
            WHERE %s AND NOT EXISTS (SELECT 1 FROM held)
              AND h.study_id = %s AND h.role = %s AND NOT h.retired AND h.assigned_count < h.max_assignments
              AND NOT EXISTS (SELECT 1 FROM {assignment_table} a WHERE a.hit_id = h.id AND a.worker_id = %s)
            ORDER BY MOD(h.position::bigint * %s + %s, %s), h.id LIMIT 1
            FOR UPDATE OF h SKIP LOCKED
        ), claimed AS (
            UPDATE {hit_table} h SET assigned_count = h.assigned_count + 1 FROM candidate
            WHERE h.id = candidate.id AND h.assigned_count < h.max_assignments
            RETURNING h.id
        ), leased AS ({insert})
        SELECT {_columns(CrowdAssignment, "held")} FROM held
        UNION ALL
        SELECT {_columns(CrowdAssignment, "leased")} FROM leased"""


def worker_next(
    lease: CrowdAssignment,
    *,
    study_id: int,
    may_lease: bool,
    order_a: int,
    order_b: int,
    modulus: int,
    now: datetime,
    external: dict[str, str],
) -> CrowdAssignment | None:
    """The lease the worker holds (running at ``now``; with ``external``, of that platform visit only), else — if
    ``may_lease`` — a new lease, as ``lease`` (unsaved: the worker, times, visit), of their first open task HIT in
    their own order ``(position · a + b) mod p``; None when neither (every open HIT may be locked by other claims at
    this instant: the caller retries).

    Open: a task HIT of the study, not retired, with a free place, that this worker never had. Call inside a
    transaction, after :func:`worker_lock`.
    """
    visit = tuple(key for key in ("external_assignment_id", "external_session") if external.get(key))
    params = [
        lease.worker_id,
        CrowdAssignmentState.LEASED,
        now,
        *(external[key] for key in visit),
        may_lease,
        study_id,
        HitRole.TASK,
        lease.worker_id,
        order_a,
        order_b,
        modulus,
        *_insert_params(lease, "hit_id"),
    ]
    with connection.cursor() as cursor:
        cursor.execute(_worker_next_sql(visit), params)
        row = cursor.fetchone()
    return None if row is None else CrowdAssignment.from_db(connection.alias, _attnames(CrowdAssignment), row)
