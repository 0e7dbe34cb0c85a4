"""Reading a feature view's answers: one raw ``FetchFeatureValuesResponse``
(Vertex AI Feature Store 2.0, in ``google-cloud-aiplatform``'s own message
classes, upb runtime) into an entity's outcome: its counts (a tuple of
floats), MISSING or FAILED.

Streaming reads ask for PROTO_STRUCT answers and per-key reads for
KEY_VALUE ones (``mab.stores.vertex``). A struct is read by feature name, at
about half the upb field accesses of KEY_VALUE's list of pairs, and the
hundreds of entries of a streaming read make that count; its numbers are
doubles, as the store's columns are. A model with a half-life needs each
value's ``generate_time``, which only KEY_VALUE carries: its streaming reads
ask for KEY_VALUE. The per-entry loop of the common case (a Beta model's two
counts) is compiled, in ``_answers.pyx``.
"""

import math

from mab.stores._vertex._answers import struct_counts
from mab.stores._vertex.store import GENERATE_TIME

INFINITY = math.inf


class FeatureViewAnswers:
    """The ``vertex`` backend's answer reading: a mixin of its ``Store`` (a ``VertexStore``).

    It uses the store's ``_invalid``, ``_complete``, ``_counts`` and
    ``_warn`` (``mab.stores._vertex.store``), and ``_positions``, a dict the
    store creates: features -> {feature name: index}.
    """

    def _entry_outcome(self, key, features, entry):
        """Counts, MISSING or FAILED from one raw FetchFeatureValuesResponse of a stream."""
        return self._decode_entries((entry,), features)[1][0]

    def _decode_entries(self, entries, features):
        """``(keys, outcomes, entries)``, three lists in the order of
        ``entries``, raw FetchFeatureValuesResponse messages of a stream
        read in PROTO_STRUCT format (``_requests`` asks for it, unless
        ``features`` asks for GENERATE_TIME); an outcome is a tuple of
        counts, MISSING or FAILED. Lists side by side, not a tuple per
        entry, as the stream's compiled handout (``_answers.deliver``)
        takes them.

        Why PROTO_STRUCT here: a upb field access costs ~0.1-0.3 us (every
        submessage read makes a wrapper object), and a struct's map is read
        by feature name, where KEY_VALUE's list of pairs must be walked and
        every pair's name read: 0.8 against 1.5 us per entry of bare access
        (``scripts/profile_vertex_client.py``). A struct's numbers are
        doubles, which is what the store's columns hold anyway, and a value
        of another kind (a string, a bool) is still told apart and refused.

        The common case in one loop, with no call per entry (for two
        features, the compiled ``_answers.struct_counts``): a positive
        ``number_value`` can only be a number (``kind`` is a oneof, and any
        other kind reads as 0.0), so only a zero needs ``WhichOneof``;
        anything else (absent or null values, other kinds, NaN or infinite
        numbers) takes the careful path, ``_struct_counts``.
        """
        if len(features) == 2 and GENERATE_TIME not in features:
            # A Beta model's two counts, in one compiled loop.
            keys, outcomes, entries, careful = struct_counts(entries, *features)
            for i in careful:
                outcomes[i] = self._struct_counts(keys[i], features, entries[i])   # missing, or something to say
            return keys, outcomes, entries
        entries = list(entries)
        keys = [entry.data_key.key for entry in entries]
        if GENERATE_TIME in features:
            # Decay needs each count's generate_time, which only KEY_VALUE
            # answers carry (a struct's values have no metadata): _requests
            # asked for KEY_VALUE.
            return keys, [self._key_value_outcome(key, features, entry) for key, entry in zip(keys, entries)], entries
        outcomes = []
        append = outcomes.append
        for key, entry in zip(keys, entries):
            get = entry.proto_struct.fields.get
            counts = []
            for name in features:
                value = get(name)
                if value is None:
                    break
                number = value.number_value
                if not 0 < number < INFINITY and (number != 0 or value.WhichOneof("kind") != "number_value"):
                    break
                counts.append(number)
            else:
                append(tuple(counts))
                continue
            append(self._struct_counts(key, features, entry))   # missing, or something to say
        return keys, outcomes, entries

    def _struct_counts(self, entity_id, features, entry):
        """Counts, MISSING or FAILED from a FetchFeatureValuesResponse in
        PROTO_STRUCT format (or in KEY_VALUE format: another fetch of the
        same key on the shared stream, for a model with a half-life, may
        have asked for that)."""
        answer_format = entry.WhichOneof("format")
        if answer_format == "key_values":
            return self._key_value_outcome(entity_id, features, entry)
        if answer_format not in (None, "proto_struct"):
            return self._invalid(entity_id, features[0], f"an answer in {answer_format} format, not proto_struct")
        if GENERATE_TIME in features:
            return self._invalid(entity_id, features[0], "an answer in proto_struct format, which has no "
                                 "generate_time for the model's half_life_seconds")
        fields = entry.proto_struct.fields
        counts = []
        for name in features:
            value = fields.get(name)
            if value is None and len(fields):
                self._warn_unknown_feature(entity_id, name, list(fields))
            kind = None if value is None else value.WhichOneof("kind")
            if kind == "number_value":
                number = value.number_value
                if not (number >= 0 and math.isfinite(number)):
                    return self._invalid(entity_id, name, f"{number!r}, not a count (finite and >= 0)")
            elif kind in (None, "null_value"):
                number = None
            else:
                return self._invalid(entity_id, name, f"a {kind.removesuffix('_value')} value")
            counts.append(number)
        return self._complete(entity_id, features, counts)

    def _key_value_outcome(self, key, features, entry):
        """Counts, MISSING or FAILED from one raw FetchFeatureValuesResponse
        of a stream in KEY_VALUE format, with GENERATE_TIME (the oldest
        ``generate_time`` of the counts) when ``features`` asks for it.

        The common case inline (every feature a count): each field access of
        a upb message costs ~0.1-0.2 us, and there are a few per feature of
        each of hundreds of keys; anything else takes the careful path.
        """
        position = self._positions.get(features)
        if position is None:
            position = self._positions[features] = {
                name: i for i, name in enumerate(features) if name != GENERATE_TIME
            }
        counts = [None] * len(features)
        # With a half-life: the oldest generate_time of the counts.
        timed = len(position) < len(features)
        oldest = INFINITY
        for pair in entry.key_values.features:
            i = position.get(pair.name)
            if i is None:
                continue
            value = pair.value
            kind = value.WhichOneof("value")
            if kind == "int64_value":
                number = value.int64_value
                if number < 0:
                    break
            elif kind == "double_value":
                number = value.double_value
                if not 0 <= number < INFINITY:   # NaN is not
                    break
            else:
                break
            counts[i] = number
            if timed:
                stamp = value.metadata.generate_time
                seconds = stamp.seconds + stamp.nanos * 1e-9
                if not seconds > 0:
                    break
                oldest = min(oldest, seconds)
        else:
            if timed:
                counts[features.index(GENERATE_TIME)] = oldest
            if None not in counts:
                return tuple(counts)
        return self._key_counts(key, features, entry)   # missing, or something to check and say

    def _key_counts(self, entity_id, features, message):
        """Counts, MISSING or FAILED from one raw FetchFeatureValuesResponse."""
        answer_format = message.WhichOneof("format")
        if answer_format not in (None, "key_values"):
            return self._invalid(entity_id, features[0], f"an answer in {answer_format} format, not key_values")
        pairs = {pair.name: pair for pair in message.key_values.features}
        values = []
        for name in features:
            if name == GENERATE_TIME:
                values.append(None)         # read from the counts' metadata by _counts
                continue
            pair = pairs.get(name)
            if pair is None and pairs:
                self._warn_unknown_feature(entity_id, name, list(pairs))
            values.append(pair.value if pair is not None and pair.WhichOneof("data") == "value" else None)
        return self._counts(entity_id, features, values)

    def _warn_unknown_feature(self, entity_id, name, returned):
        # Not a silent zero: the entity has no value for it, and a feature
        # the view never has is a configuration error, so say so.
        self._warn(
            "the feature view returned no feature %r for key %r (it returned %s); is the model's feature name right?",
            name, entity_id, ", ".join(map(repr, returned)),
        )
