"""Event schemas and their validation.

Request bodies are decoded and validated in one pass by msgspec (C-backed). A batch is
all-or-nothing: when any event in it is invalid, the whole request is rejected with the
errors of every invalid index, and nothing of it reaches Kafka.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Final, TypeVar

import iso4217
import msgspec

T = TypeVar("T")

LEVELS: Final = frozenset({"TRACE", "DEBUG", "INFO", "WARN", "ERROR", "FATAL"})
MAX_ERRORS_REPORTED: Final = 50


class InvalidJSON(ValueError):
    """The body is not well-formed JSON (or NDJSON): answered 400."""


class InvalidEvents(ValueError):
    """The body is JSON but breaks the schema: answered 422 with one entry per problem."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(errors[0]["message"] if errors else "invalid events")
        self.errors = errors


class TooManyEvents(ValueError):
    """The batch holds more events than allowed: answered 413."""


class LogIn(msgspec.Struct, forbid_unknown_fields=True):
    """One application log event as clients send it."""

    source: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    level: Annotated[str, msgspec.Meta(min_length=1, max_length=16)]
    message: Annotated[str, msgspec.Meta(min_length=1)]
    timestamp: dt.datetime | None = None
    attributes: dict[str, Any] | None = None
    traceId: Annotated[str, msgspec.Meta(max_length=128)] | None = None

    def __post_init__(self) -> None:
        # Runs for every event of every batch: the common case (an upper-case level, a zoned
        # timestamp or none) costs two look-ups.
        if self.level not in LEVELS:
            level = self.level.upper()
            if level not in LEVELS:
                raise ValueError(f"level must be one of {', '.join(sorted(LEVELS))}")
            self.level = level
        if self.timestamp is not None and self.timestamp.tzinfo is None:
            self.timestamp = as_utc(self.timestamp)


class LogBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch decoded in one pass: the path every valid batch takes."""

    logs: list[LogIn]


class LogBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """A batch item by item: the path that names every invalid index."""

    logs: list[msgspec.Raw]


class LogRecord(msgspec.Struct, omit_defaults=True):
    """The value written to Kafka for one application log event."""

    eventId: str
    receivedAt: str
    source: str
    level: str
    message: str
    timestamp: str | dt.datetime  # encoded by msgspec as RFC 3339, as format_timestamp writes it
    attributes: dict[str, Any] | None = None
    traceId: str | None = None


_log_decoder: Final = msgspec.json.Decoder(LogIn)
_log_batch_decoder: Final = msgspec.json.Decoder(LogBatch)
_batch_decoder: Final = msgspec.json.Decoder(LogBatchIn)
_any_decoder: Final = msgspec.json.Decoder()


TOO_DEEP: Final = "the JSON is nested too deeply"


def _schema_error(index: int | None, error: msgspec.ValidationError) -> dict[str, Any]:
    entry: dict[str, Any] = {"message": str(error)}
    if index is not None:
        entry["index"] = index
    return entry


def _classify(body: bytes | msgspec.Raw, error: msgspec.DecodeError) -> None:
    """Tell malformed JSON (400) from schema violations (422)."""
    if isinstance(error, msgspec.ValidationError):
        return
    try:
        _any_decoder.decode(body)
    except msgspec.DecodeError:
        raise InvalidJSON(str(error)) from None


def _decode_one(body: bytes, decoder: msgspec.json.Decoder[T]) -> T:
    """Decode one JSON document, mapping failures onto InvalidJSON and InvalidEvents."""
    try:
        return decoder.decode(body)
    except RecursionError:
        raise InvalidEvents([{"message": TOO_DEEP}]) from None
    except UnicodeDecodeError as error:
        raise InvalidJSON(f"the JSON is not valid UTF-8: {error}") from None
    except msgspec.DecodeError as error:
        _classify(body, error)
        raise InvalidEvents([{"message": str(error)}]) from None


def decode_log(body: bytes) -> LogIn:
    """Decode one log event from a JSON body."""
    return _decode_one(body, _log_decoder)


def _decode_items(
    items: Sequence[bytes | msgspec.Raw], max_events: int, decoder: msgspec.json.Decoder[T]
) -> tuple[list[T], list[dict[str, Any]]]:
    """Decode every item of a batch; the decoded ones, and an error per invalid index."""
    if len(items) > max_events:
        raise TooManyEvents(f"a batch holds at most {max_events} events, this one has {len(items)}")
    if not items:
        raise InvalidEvents([{"message": "a batch needs at least one event"}])
    events: list[T] = []
    errors: list[dict[str, Any]] = []
    for index, item in enumerate(items):
        try:
            events.append(decoder.decode(item))
        except RecursionError:
            errors.append({"index": index, "message": TOO_DEEP})
        except msgspec.ValidationError as error:
            if len(errors) < MAX_ERRORS_REPORTED:
                errors.append(_schema_error(index, error))
        except msgspec.DecodeError as error:
            raise InvalidJSON(f"event {index}: {error}") from None
        except UnicodeDecodeError as error:
            raise InvalidJSON(f"event {index} is not valid UTF-8: {error}") from None
    return events, errors


def _all_valid(decoded: tuple[list[T], list[dict[str, Any]]]) -> list[T]:
    events, errors = decoded
    if errors:
        raise InvalidEvents(errors)
    return events


def _fast(decode: Callable[[], list[T]], max_events: int) -> list[T] | None:
    """The events of a batch decoded in one pass, or None when it needs the item-by-item path
    (something is invalid, or the count is out of bounds) to be refused with every reason."""
    try:
        decoded = decode()
    except (msgspec.DecodeError, RecursionError, UnicodeDecodeError):
        return None
    return decoded if 0 < len(decoded) <= max_events else None


def decode_log_batch(body: bytes, max_events: int) -> list[LogIn]:
    """Decode ``{"logs": [...]}``; every invalid index is reported, none is accepted."""
    fast = _fast(lambda: _log_batch_decoder.decode(body).logs, max_events)
    if fast is not None:
        return fast
    batch = _decode_one(body, _batch_decoder)
    return _all_valid(_decode_items(batch.logs, max_events, _log_decoder))


def decode_log_ndjson(body: bytes, max_events: int) -> list[LogIn]:
    """Decode one log event per non-empty line."""
    return _decode_ndjson(body, max_events, _log_decoder)


def _decode_ndjson(body: bytes, max_events: int, decoder: msgspec.json.Decoder[T]) -> list[T]:
    fast = _fast(lambda: decoder.decode_lines(body), max_events)
    if fast is not None:
        return fast
    lines = [line for line in body.split(b"\n") if line.strip()]
    return _all_valid(_decode_items(lines, max_events, decoder))


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    """A timestamp without a zone is taken as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=dt.timezone.utc)
    return value


def format_timestamp(value: dt.datetime) -> str:
    utc = as_utc(value)
    assert utc is not None
    return utc.isoformat().replace("+00:00", "Z")


# -- transactions ------------------------------------------------------------------------

TRANSACTION_TYPES: Final = frozenset({"PAYMENT", "REFUND", "TRANSFER", "DEPOSIT", "WITHDRAWAL", "CHARGEBACK", "ADJUSTMENT"})
MAX_AMOUNT_DIGITS: Final = 30


def currency_minor_unit(code: str) -> int | None:
    """The ISO 4217 minor unit (fraction digits) of a currency, or None when it is not a currency."""
    try:
        currency = iso4217.Currency(code)
    except ValueError:
        return None
    exponent = currency.exponent
    return exponent if isinstance(exponent, int) else None


class TransactionIn(msgspec.Struct, forbid_unknown_fields=True):
    """One financial event as clients send it. ``amount`` is decoded exactly, never as a float."""

    userId: Annotated[str, msgspec.Meta(min_length=1, max_length=128)]
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=32)]
    amount: decimal.Decimal
    currency: Annotated[str, msgspec.Meta(min_length=3, max_length=3)]
    description: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    metadata: dict[str, Any] | None = None
    occurredAt: dt.datetime | None = None

    def __post_init__(self) -> None:
        kind = self.type.upper()
        if kind not in TRANSACTION_TYPES:
            raise ValueError(f"type must be one of {', '.join(sorted(TRANSACTION_TYPES))}")
        self.type = kind
        code = self.currency.upper()
        minor = currency_minor_unit(code)
        if minor is None:
            raise ValueError(f"currency {self.currency!r} is not an ISO 4217 currency with a minor unit")
        self.currency = code
        amount = self.amount
        if not amount.is_finite() or amount <= 0:
            raise ValueError("amount must be a positive number")
        if amount.adjusted() + 1 + minor > MAX_AMOUNT_DIGITS:
            raise ValueError(f"amount has more than {MAX_AMOUNT_DIGITS} digits")
        with decimal.localcontext() as context:
            context.prec = MAX_AMOUNT_DIGITS
            exact = amount.quantize(decimal.Decimal(1).scaleb(-minor))
        if exact != amount:
            raise ValueError(f"amount has more fraction digits than {code} allows ({minor})")
        self.amount = exact


class TransactionBatchItem(TransactionIn, forbid_unknown_fields=True):
    idempotencyKey: Annotated[str, msgspec.Meta(min_length=1, max_length=255)] | None = None


class TransactionBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    transactions: list[msgspec.Raw]


class TransactionRecord(msgspec.Struct, omit_defaults=True):
    """The value written to Kafka for one transaction; ``amount`` is a decimal string."""

    eventId: str
    receivedAt: str
    userId: str
    type: str
    amount: decimal.Decimal
    currency: str
    occurredAt: str
    description: str | None = None
    metadata: dict[str, Any] | None = None


_transaction_decoder: Final = msgspec.json.Decoder(TransactionIn)
_transaction_item_decoder: Final = msgspec.json.Decoder(TransactionBatchItem)
_transaction_batch_decoder: Final = msgspec.json.Decoder(TransactionBatchIn)


def decode_transaction(body: bytes) -> TransactionIn:
    return _decode_one(body, _transaction_decoder)


def decode_transaction_batch(body: bytes, max_events: int) -> list[TransactionBatchItem]:
    """Decode ``{"transactions": [...]}``; every invalid index is reported, none is accepted."""
    batch = _decode_one(body, _transaction_batch_decoder)
    decoded, errors = _decode_items(batch.transactions, max_events, _transaction_item_decoder)
    keys = [t.idempotencyKey for t in decoded if t.idempotencyKey is not None]
    if len(keys) != len(set(keys)):
        errors.append({"message": "two transactions of the batch share an idempotencyKey"})
    if errors:
        raise InvalidEvents(errors)
    return decoded


# -- host metrics ------------------------------------------------------------------------

MAX_LABELS: Final = 64


class MetricIn(msgspec.Struct, forbid_unknown_fields=True):
    """One host metric sample, from the collector or a remote agent."""

    host: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    metric: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    value: float
    unit: Annotated[str, msgspec.Meta(max_length=32)] = ""
    labels: Annotated[
        dict[Annotated[str, msgspec.Meta(min_length=1, max_length=128)], Annotated[str, msgspec.Meta(max_length=1024)]],
        msgspec.Meta(max_length=MAX_LABELS),
    ] = {}
    timestamp: dt.datetime | None = None

    def __post_init__(self) -> None:
        if not math.isfinite(self.value):
            raise ValueError("value must be a finite number")
        self.timestamp = as_utc(self.timestamp)


class MetricBatch(msgspec.Struct, forbid_unknown_fields=True):
    """A batch decoded in one pass: the path every valid batch takes."""

    metrics: list[MetricIn]


class MetricBatchIn(msgspec.Struct, forbid_unknown_fields=True):
    """A batch item by item: the path that names every invalid index."""

    metrics: list[msgspec.Raw]


class MetricRecord(msgspec.Struct):
    """The value written to Kafka for one host metric sample."""

    eventId: str
    receivedAt: str
    host: str
    metric: str
    value: float
    unit: str
    labels: dict[str, str]
    timestamp: str | dt.datetime


_metric_decoder: Final = msgspec.json.Decoder(MetricIn)
_metric_fast_batch_decoder: Final = msgspec.json.Decoder(MetricBatch)
_metric_batch_decoder: Final = msgspec.json.Decoder(MetricBatchIn)


def decode_metric(body: bytes) -> MetricIn:
    return _decode_one(body, _metric_decoder)


def decode_metric_batch(body: bytes, max_events: int) -> list[MetricIn]:
    """Decode ``{"metrics": [...]}``; every invalid index is reported, none is accepted."""
    fast = _fast(lambda: _metric_fast_batch_decoder.decode(body).metrics, max_events)
    if fast is not None:
        return fast
    batch = _decode_one(body, _metric_batch_decoder)
    return _all_valid(_decode_items(batch.metrics, max_events, _metric_decoder))


def decode_metric_ndjson(body: bytes, max_events: int) -> list[MetricIn]:
    """Decode one metric sample per non-empty line."""
    return _decode_ndjson(body, max_events, _metric_decoder)
