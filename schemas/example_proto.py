"""``tf.train.Example`` messages without importing TensorFlow.

Importing TensorFlow costs seconds in every worker process, and the scrape stage needs only the
Example protocol buffer. This module declares the same messages (``tensorflow/core/example/
example.proto`` and ``feature.proto``, field numbers identical) in a private descriptor pool, so
the bytes are wire-identical to TensorFlow's and never clash with TensorFlow's own registration.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2
from google.protobuf import descriptor_pool
from google.protobuf import message_factory

_F = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    proto = descriptor_pb2.FileDescriptorProto(
        name="poster_recs/example.proto", package="tensorflow", syntax="proto3"
    )

    def message(name: str, fields: list[tuple[str, int, int, int, str]]) -> None:
        msg = proto.message_type.add(name=name)
        for field_name, number, field_type, label, type_name in fields:
            field = msg.field.add(name=field_name, number=number, type=field_type, label=label)
            if type_name:
                field.type_name = type_name
            if field_type in (_F.TYPE_FLOAT, _F.TYPE_INT64) and label == _F.LABEL_REPEATED:
                field.options.packed = True

    rep, opt = _F.LABEL_REPEATED, _F.LABEL_OPTIONAL
    message("BytesList", [("value", 1, _F.TYPE_BYTES, rep, "")])
    message("FloatList", [("value", 1, _F.TYPE_FLOAT, rep, "")])
    message("Int64List", [("value", 1, _F.TYPE_INT64, rep, "")])
    message(
        "Feature",
        [
            ("bytes_list", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.BytesList"),
            ("float_list", 2, _F.TYPE_MESSAGE, opt, ".tensorflow.FloatList"),
            ("int64_list", 3, _F.TYPE_MESSAGE, opt, ".tensorflow.Int64List"),
        ],
    )
    feature = proto.message_type[-1]
    feature.oneof_decl.add(name="kind")
    for field in feature.field:
        field.oneof_index = 0
    features = proto.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=_F.TYPE_STRING, label=opt)
    entry.field.add(
        name="value", number=2, type=_F.TYPE_MESSAGE, label=opt, type_name=".tensorflow.Feature"
    )
    features.field.add(
        name="feature",
        number=1,
        type=_F.TYPE_MESSAGE,
        label=rep,
        type_name=".tensorflow.Features.FeatureEntry",
    )
    message("Example", [("features", 1, _F.TYPE_MESSAGE, opt, ".tensorflow.Features")])
    return proto


_POOL = descriptor_pool.DescriptorPool()
_POOL.Add(_file())
Example = message_factory.GetMessageClass(_POOL.FindMessageTypeByName("tensorflow.Example"))
