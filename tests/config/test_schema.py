"""The published JSON Schema: checked in, valid, field for field the model's, and its
messages (with the reading and parsing stages before it) as a user reads them."""

from __future__ import annotations

import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

import attrs
import cattrs
import jsonschema
import pytest
from expect import lines, problems

from runner.config import model
from runner.config.fields import description_of, schema_keywords_of
from runner.config.load import load
from runner.config.problems import ConfigError
from runner.config.schema import schema, schema_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[2]
CHECKED_IN = ROOT / "schemas" / "vmrun.schema.json"


# --- (a) the checked-in file, (b) a valid schema ---------------------------------------------


def test_checked_in_schema_is_current() -> None:
    assert CHECKED_IN.read_text(encoding="utf-8") == schema_text(), (
        "schemas/vmrun.schema.json is out of date with the model classes; regenerate it with "
        "`vmrun schema > schemas/vmrun.schema.json`"
    )


def test_schema_is_valid_draft_2020_12() -> None:
    published = json.loads(schema_text())
    assert published["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(published)


def test_schema_text_is_the_schema() -> None:
    assert json.loads(schema_text()) == json.loads(json.dumps(schema()))
    assert schema_text().endswith("}\n")


def test_dev_config_is_valid_against_the_checked_in_schema() -> None:
    document = tomllib.loads((ROOT / "configs" / "dev.toml").read_text(encoding="utf-8"))
    jsonschema.Draft202012Validator(json.loads(CHECKED_IN.read_text())).validate(document)


# --- (c) field for field ---------------------------------------------------------------------


def _strip_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _union_members(tp: Any) -> list[type]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(members) > 1:
            return members
    return []


def _reachable(tp: Any, out: dict[str, type]) -> None:
    if attrs.has(tp):
        if tp.__name__ in out:
            return
        out[tp.__name__] = tp
        for hint in typing.get_type_hints(tp).values():
            _reachable(hint, out)
        return
    for arg in typing.get_args(tp):
        if not isinstance(arg, str):  # Literal values
            _reachable(arg, out)


def _classes() -> dict[str, type]:
    out: dict[str, type] = {}
    _reachable(model.VmResources, out)
    return out


CLASSES = _classes()
PUBLISHED = json.loads(schema_text())


def _definition(name: str) -> dict[str, Any]:
    if name == "VmResources":
        top = dict(PUBLISHED)
        top["properties"] = {k: v for k, v in top["properties"].items() if k != "$schema"}
        return top
    return PUBLISHED["$defs"][name]


def _plain_default(field: attrs.Attribute) -> Any:
    """The field's default as a document holds it: unstructured, None left out, JSON types."""
    default = field.default
    if isinstance(default, attrs.Factory):  # type: ignore[arg-type]
        default = default.factory()

    def without_none(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: without_none(v) for k, v in value.items() if v is not None}
        if isinstance(value, list | tuple):
            return [without_none(v) for v in value]
        return value

    return json.loads(json.dumps(without_none(cattrs.Converter().unstructure(default))))


def test_every_class_has_a_definition() -> None:
    assert "VmResources" in CLASSES and "TeeConfig" in CLASSES and "TtyPort" in CLASSES
    assert set(PUBLISHED["$defs"]) == set(CLASSES) - {"VmResources"}


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_definition_matches_class(name: str) -> None:
    cls = CLASSES[name]
    definition = _definition(name)
    fields = attrs.fields(cls)
    hints = typing.get_type_hints(cls)

    assert definition["type"] == "object"
    assert definition["additionalProperties"] is False
    assert definition["description"].strip()
    assert definition["description"] == " ".join((cls.__doc__ or "").split())

    properties = definition["properties"]
    assert list(properties) == [f.name for f in fields]
    required = [f.name for f in fields if f.default is attrs.NOTHING]
    assert definition.get("required", []) == required
    if not required:
        assert "required" not in definition

    for field in fields:
        prop = properties[field.name]
        where = f"{name}.{field.name}"
        assert prop["description"].strip(), where
        assert prop["description"] == description_of(field), where
        for keyword, value in schema_keywords_of(field).items():
            assert prop[keyword] == json.loads(json.dumps(value)), where
        if field.default is attrs.NOTHING:
            assert "default" not in prop, where
        else:
            default = _plain_default(field)
            if default is None:
                assert "default" not in prop, where
            else:
                assert prop["default"] == default, where
                # The default is valid against its own property.
                jsonschema.Draft202012Validator({**prop, "$defs": PUBLISHED["$defs"]}).validate(
                    default
                )
        _check_type(prop, hints[field.name], where)


def _check_type(prop: dict[str, Any], hint: Any, where: str) -> None:
    tp = _strip_optional(hint)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    members = _union_members(tp)
    if tp is bool:
        assert prop["type"] == "boolean", where
    elif tp is int:
        assert prop["type"] == "integer", where
    elif tp is str:
        assert prop["type"] == "string", where
    elif origin is Literal:
        if len(args) == 1:
            assert prop["const"] == args[0], where
        else:
            assert prop["enum"] == list(args), where
    elif members:
        tags = [attrs.fields_dict(m)["type"].default for m in members]
        assert prop["type"] == "object", where
        assert prop["required"] == ["type"], where
        assert prop["properties"]["type"]["enum"] == tags, where
        assert prop["properties"]["type"]["description"].strip(), where
        branches = [
            (b["if"]["properties"]["type"]["const"], b["then"]["$ref"]) for b in prop["allOf"]
        ]
        assert branches == [
            (t, f"#/$defs/{m.__name__}") for t, m in zip(tags, members, strict=True)
        ], where
    elif origin is tuple:
        assert prop["type"] == "array", where
        _check_type(prop["items"], args[0], where + "[]")
    elif origin is dict:
        key_tp, value_tp = args
        assert prop["type"] == "object", where
        if typing.get_origin(key_tp) is Literal:
            assert prop["propertyNames"]["enum"] == list(typing.get_args(key_tp)), where
        _check_type(prop["additionalProperties"], value_tp, where + "{}")
    elif attrs.has(tp):
        assert prop["$ref"] == f"#/$defs/{tp.__name__}", where
    else:  # pragma: no cover - a new kind of type needs a branch here
        pytest.fail(f"{where}: no check for {tp!r}")


def test_schema_key_at_the_top_only() -> None:
    assert PUBLISHED["properties"]["$schema"]["type"] == "string"
    assert PUBLISHED["properties"]["$schema"]["description"].strip()
    assert all("$schema" not in d["properties"] for d in PUBLISHED["$defs"].values())


# --- (d) messages ----------------------------------------------------------------------------


def test_unknown_key_with_a_suggestion(write_vm) -> None:
    path = write_vm("""\
        [machine]
        vcpus = 2
        mem = 256
        """)
    assert lines(path) == [
        f"{path}:2:1: machine.vcpus: unknown key `vcpus`; did you mean `vcpu_count`?",
        f"{path}:3:1: machine.mem: unknown key `mem`; did you mean `mem_size_mib`?",
    ]


def test_unknown_key_without_a_close_match_lists_the_keys(write_vm) -> None:
    path = write_vm("[machine]\nzzzz = 1\n")
    assert problems(path) == [
        (
            "machine.zzzz",
            "unknown key `zzzz`; expected one of: vcpu_count, mem_size_mib, ht_enabled, "
            "cpu_template, nested, split_irqchip",
        )
    ]


def test_unknown_key_in_a_tagged_union_member(write_vm) -> None:
    path = write_vm('[[net]]\nid = "a"\nbackend = { type = "tap", tap_name = "t", nmae = "x" }\n')
    assert lines(path) == [
        f"{path}:3:43: net[0].backend.nmae: unknown key `nmae`; expected one of: type, tap_name"
    ]


def test_missing_required_key(write_vm) -> None:
    path = write_vm("""\
        [workload]
        args = ["-c", "true"]

        [tee_config]
        workload_id = "w"
        cpus = 1
        """)
    assert lines(path) == [
        f"{path}:1:2: workload.exec: missing required key `exec`",
        f"{path}:4:2: tee_config.ram_mib: missing required key `ram_mib`",
    ]


def test_several_missing_required_keys_are_each_reported_once(write_vm) -> None:
    path = write_vm('[tee_config]\ntee = "snp"\n')
    assert lines(path) == [
        f"{path}:1:2: tee_config.workload_id: missing required key `workload_id`",
        f"{path}:1:2: tee_config.cpus: missing required key `cpus`",
        f"{path}:1:2: tee_config.ram_mib: missing required key `ram_mib`",
    ]


def test_missing_union_tag_and_member_key(write_vm) -> None:
    assert problems(write_vm('root = { tag = "x" }\n')) == [
        ("root.type", "missing required key `type`")
    ]
    assert problems(write_vm('root = { type = "fs" }\n')) == [
        ("root.tag", "missing required key `tag`")
    ]


def test_wrong_types(write_vm) -> None:
    path = write_vm("""\
        dhcp_client = "yes"

        [machine]
        vcpu_count = "2"
        mem_size_mib = 1.5
        ht_enabled = 1

        [[fs]]
        tag = 1
        shared_dir = ["."]
        """)
    assert lines(path) == [
        f'{path}:1:1: dhcp_client: expected true or false, got a string "yes"',
        f'{path}:4:1: machine.vcpu_count: expected an integer, got a string "2"',
        f"{path}:5:1: machine.mem_size_mib: expected an integer, got a float 1.5",
        f"{path}:6:1: machine.ht_enabled: expected true or false, got an integer 1",
        f"{path}:9:1: fs[0].tag: expected a string, got an integer 1",
        f"{path}:10:1: fs[0].shared_dir: expected a string, got an array [...]",
    ]


def test_wrong_container_types(write_vm) -> None:
    path = write_vm('machine = 5\nfs = { tag = "a" }\n')
    assert problems(path) == [
        ("machine", "expected a table, got an integer 5"),
        ("fs", "expected an array, got a table {...}"),
    ]


def test_toml_date_is_a_wrong_type(write_vm) -> None:
    path = write_vm("[machine]\nvcpu_count = 1979-05-27T07:32:00Z\n")
    assert problems(path) == [
        ("machine.vcpu_count", "expected an integer, got a datetime 1979-05-27 07:32:00+00:00")
    ]


def test_json_boolean_is_not_an_integer(write_vm) -> None:
    path = write_vm('{"machine": {"vcpu_count": true}}', suffix=".json")
    assert lines(path) == [
        f"{path}:1:14: machine.vcpu_count: expected an integer, got a boolean true"
    ]


def test_json_integral_float_is_not_an_integer(write_vm) -> None:
    # JSON Schema takes 2.0 for the integer 2; vmrun does not (nor does TOML).
    path = write_vm('{"machine": {"vcpu_count": 2.0, "mem_size_mib": 1e30}}', suffix=".json")
    assert problems(path) == [
        ("machine.vcpu_count", "expected an integer, got a float 2.0"),
        ("machine.mem_size_mib", "expected an integer, got a float 1e+30"),
    ]


def test_enum(write_vm) -> None:
    path = write_vm("""\
        [machine]
        cpu_template = "T3"

        [kernel]
        format = "zip"

        [[net]]
        id = "a"
        backend = { type = "vde" }
        """)
    assert lines(path) == [
        f'{path}:2:1: machine.cpu_template: "T3" is not one of: T2, C3',
        f'{path}:5:1: kernel.format: "zip" is not one of: auto, bzimage, elf, raw, pe_gz, '
        "image_gz, image_bz2, image_zstd",
        f'{path}:9:13: net[0].backend.type: "vde" is not one of: passt, tap, unixstream, unixgram',
    ]


def test_enum_of_property_names(write_vm) -> None:
    path = write_vm('[workload]\nexec = "x"\nrlimits.nofiles = { soft = 1, hard = 1 }\n')
    assert problems(path) == [
        (
            "workload.rlimits.nofiles",
            '"nofiles" is not one of: as, core, cpu, data, fsize, locks, memlock, msgqueue, '
            "nice, nofile, nproc, rss, rtprio, rttime, sigpending, stack",
        )
    ]


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("[machine]\nvcpu_count = 0\n", "machine.vcpu_count", "must be at least 1, got 0"),
        ("[machine]\nvcpu_count = 33\n", "machine.vcpu_count", "must be at most 32, got 33"),
        (
            "[machine]\nmem_size_mib = 1048577\n",
            "machine.mem_size_mib",
            "must be at most 1048576, got 1048577",
        ),
        ("[vsock]\nguest_cid = 2\n", "vsock.guest_cid", "must be at least 3, got 2"),
        (
            "[vsock]\nguest_cid = 4294967295\n",
            "vsock.guest_cid",
            "must be at most 4294967294, got 4294967295",
        ),
        (
            "[kernel_bundle]\nguest_addr = -4096\n",
            "kernel_bundle.guest_addr",
            "must be at least 0, got -4096",
        ),
        (
            '[workload]\nexec = "x"\nrlimits.core = { soft = -2, hard = -1 }\n',
            "workload.rlimits.core.soft",
            "must be at least -1, got -2",
        ),
        (
            "[[vsock.tcp_ports]]\nhost_port = 65536\nguest_port = 80\n",
            "vsock.tcp_ports[0].host_port",
            "must be at most 65535, got 65536",
        ),
    ],
)
def test_minimum_and_maximum(write_vm, text: str, where: str, message: str) -> None:
    assert problems(write_vm(text)) == [(where, message)]


@pytest.mark.parametrize(
    "text",
    [
        "[machine]\nvcpu_count = 1\n",
        "[machine]\nvcpu_count = 32\n",
        "[machine]\nmem_size_mib = 1048576\n",
        "[vsock]\nguest_cid = 3\n",
        "[vsock]\nguest_cid = 4294967294\n",
        "[kernel_bundle]\nguest_addr = 0\n",
    ],
)
def test_minimum_and_maximum_are_inclusive(write_vm, text: str) -> None:
    load(write_vm(text))


def test_patterns(write_vm) -> None:
    path = write_vm("""\
        kernel_console = "tty0"

        [[net]]
        id = "eth 0"
        mac = "52:54:00:12:34"
        backend = { type = "tap", tap_name = "a/b" }

        [workload]
        exec = "x"
        hostname = "-bad"
        workdir = "rel"

        [workload.env]
        1A = "x"
        """)
    assert lines(path) == [
        f'{path}:1:1: kernel_console: "tty0" must be ttyS0..ttyS3 or hvc0..hvc99',
        f'{path}:4:1: net[0].id: "eth 0" may contain only letters, digits, `_`, `.` and `-`',
        f'{path}:5:1: net[0].mac: "52:54:00:12:34" is not a MAC address '
        "(six hex pairs: 52:54:00:12:34:56)",
        f'{path}:6:27: net[0].backend.tap_name: "a/b" must not contain `/` or white space',
        f'{path}:10:1: workload.hostname: "-bad" is not a valid host name',
        f'{path}:11:1: workload.workdir: "rel" must be an absolute path in the guest',
        f'{path}:14:1: workload.env.1A: "1A" is not a variable name '
        "(letters, digits, `_`; no digit first)",
    ]


@pytest.mark.parametrize(
    "mac", ["52:54:00:12:34:5g", "52-54-00-12-34-56", "5254.0012.3456", "52:54:00:12:34:56:78"]
)
def test_mac_pattern(write_vm, mac: str) -> None:
    path = write_vm(f'[[net]]\nid = "a"\nmac = "{mac}"\nbackend = {{ type = "passt" }}\n')
    assert problems(path) == [
        ("net[0].mac", f'"{mac}" is not a MAC address (six hex pairs: 52:54:00:12:34:56)')
    ]


@pytest.mark.parametrize("hostname", ["a_b", "a..b", "-a", "a-", ".", "a.", "é"])
def test_hostname_pattern(write_vm, hostname: str) -> None:
    path = write_vm(f'[workload]\nexec = "x"\nhostname = "{hostname}"\n')
    assert problems(path) == [("workload.hostname", f'"{hostname}" is not a valid host name')]


def test_hostname_label_of_64_and_long_values_shown_cut(write_vm) -> None:
    # One label of 64 characters (labels hold 63); values over 60 characters are shown cut.
    path = write_vm(f'[workload]\nexec = "x"\nhostname = "{"a" * 64}"\n')
    assert problems(path) == [
        ("workload.hostname", '"' + "a" * 57 + '..." is not a valid host name')
    ]
    path = write_vm(f'[workload]\nexec = "x"\nhostname = "{"a." * 32 + "a"}"\n')
    assert problems(path) == [("workload.hostname", "must be at most 64 characters, got 65")]


@pytest.mark.parametrize(
    "hostname", ["a", "dev", "a-b.example.com", "A1", "a" * 63, ".".join(["a" * 31] * 2)]
)
def test_hostname_pattern_allows(write_vm, hostname: str) -> None:
    load(write_vm(f'[workload]\nexec = "x"\nhostname = "{hostname}"\n'))


def test_id_pattern_allows_its_characters(write_vm, tmp_path: Path) -> None:
    (tmp_path / "d").write_bytes(b"")
    load(write_vm('[[block]]\nid = "A-z_0.9"\npath = "d"\n'))


@pytest.mark.parametrize(
    "text",
    [
        '[[net]]\nid = "eth0\\n"\nbackend = { type = "passt" }\n',
        '[[net]]\nid = "e"\nmac = "52:54:00:12:34:56\\n"\nbackend = { type = "passt" }\n',
        '[[net]]\nid = "e"\nbackend = { type = "tap", tap_name = "tap0\\n" }\n',
        '[workload]\nexec = "x"\nhostname = "dev\\n"\n',
        'kernel_console = "hvc0\\n"\n',
    ],
    ids=["id", "mac", "tap_name", "hostname", "kernel_console"],
)
def test_pattern_refuses_a_trailing_newline(write_vm, text: str) -> None:
    with pytest.raises(ConfigError):
        load(write_vm(text))


def test_max_length(write_vm) -> None:
    path = write_vm(f'[[fs]]\ntag = "{"a" * 37}"\nshared_dir = "."\n')
    assert lines(path) == [f"{path}:2:1: fs[0].tag: must be at most 36 characters, got 37"]
    path = write_vm(
        '[[net]]\nid = "a"\nbackend = { type = "tap", tap_name = "' + "t" * 16 + '" }\n'
    )
    assert problems(path) == [("net[0].backend.tap_name", "must be at most 15 characters, got 16")]


def test_min_length(write_vm) -> None:
    path = write_vm('[workload]\nexec = ""\n')
    assert problems(path) == [("workload.exec", "must not be empty")]


def test_unique_items(write_vm) -> None:
    path = write_vm("""\
        [[net]]
        id = "a"
        backend = { type = "passt" }
        features = ["csum", "guest_tso4", "csum"]
        """)
    assert lines(path) == [f"{path}:4:1: net[0].features: lists an item more than once"]


def test_max_items(write_vm) -> None:
    path = write_vm("serial_consoles = [{}, {}, {}, {}, {}]\n")
    assert lines(path) == [f"{path}:1:1: serial_consoles: must list at most 4 item(s), got 5"]
    load(write_vm("serial_consoles = [{}, {}, {}, {}]\n"))


def test_min_items(write_vm) -> None:
    path = write_vm('[[virtio_consoles]]\ntype = "ports"\nports = []\n')
    assert problems(path) == [("virtio_consoles[0].ports", "must list at least 1 item(s)")]


def test_every_schema_problem_at_once(write_vm) -> None:
    path = write_vm(
        """\
        {
          "machine": {"vcpu_count": 0, "vcpu_cont": 1},
          "workload": {"hostname": "x y"}
        }
        """,
        suffix=".json",
    )
    assert lines(path) == [
        f"{path}:2:15: machine.vcpu_count: must be at least 1, got 0",
        f"{path}:2:32: machine.vcpu_cont: unknown key `vcpu_cont`; did you mean `vcpu_count`?",
        f"{path}:3:3: workload.exec: missing required key `exec`",
        f'{path}:3:16: workload.hostname: "x y" is not a valid host name',
    ]


def test_schema_key_is_accepted_and_ignored(write_vm) -> None:
    vm = load(write_vm('"$schema" = "../schemas/vmrun.schema.json"\n'))
    assert vm.resources == model.VmResources()
    assert problems(write_vm('"$schema" = 1\n')) == [
        ("$schema", "expected a string, got an integer 1")
    ]


@pytest.mark.parametrize(
    "text",
    ["root = 5\n", '[[net]]\nid = "a"\nbackend = "tap"\n'],
    ids=["root", "net-backend"],
)
def test_non_table_union_value_is_reported_once(write_vm, text: str) -> None:
    assert len(problems(write_vm(text))) == 1


# --- reading and parsing ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "at", "message"),
    [
        ("[machine\nvcpu_count = 1\n", "1:9", "TOML syntax: Expected ']' at the end of a table "
         "declaration"),
        ("[machine]\nvcpu_count = \n", "2:14", "TOML syntax: Invalid value"),
        ("[machine]\nvcpu_count = 1\nvcpu_count = 2\n", "3:15", "TOML syntax: Cannot overwrite "
         "a value"),
        ('a = "abc', "1:9", "TOML syntax: Unterminated string"),
        ("x = [1,\n", "2:1", "TOML syntax: Invalid value"),
    ],
)  # fmt: skip
def test_toml_syntax_error(write_vm, text: str, at: str, message: str) -> None:
    path = write_vm(text)
    assert lines(path) == [f"{path}:{at}: (document): {message}"]


@pytest.mark.parametrize(
    ("text", "at", "message"),
    [
        ('{"a": 1,\n  "b": }', "2:8", "JSON syntax: Expecting value"),
        ('{\n  "machine": {\n    "vcpu_count": 1\n  }\n', "5:1", "JSON syntax: Expecting ',' "
         "delimiter"),
        ('{"a": 1} x', "1:10", "JSON syntax: Extra data"),
        ('{"a": 1,}', "1:9", "JSON syntax: Expecting property name enclosed in double quotes"),
        ("", "1:1", "JSON syntax: Expecting value"),
    ],
)  # fmt: skip
def test_json_syntax_error(write_vm, text: str, at: str, message: str) -> None:
    path = write_vm(text, suffix=".json")
    assert lines(path) == [f"{path}:{at}: (document): {message}"]


@pytest.mark.parametrize("text", ["[1, 2]", '"text"', "null", "3"])
def test_json_top_level_must_be_an_object(write_vm, text: str) -> None:
    path = write_vm(text, suffix=".json")
    assert lines(path) == [
        f"{path}:1:1: (document): a VM file holds one object (a table) at the top"
    ]


def test_json_duplicate_key(write_vm) -> None:
    path = write_vm('{"machine": {"vcpu_count": 1,\n "vcpu_count": 2}}', suffix=".json")
    message = "`vcpu_count` is given twice in one object"
    assert lines(path) == [f"{path}:2:2: machine.vcpu_count: {message}"]
    path = write_vm('{"dhcp_client": true, "dhcp_client": false}', suffix=".json")
    assert lines(path) == [f"{path}:1:23: dhcp_client: `dhcp_client` is given twice in one object"]


def test_json_duplicate_key_in_a_later_object(write_vm) -> None:
    text = (
        '{"net": [\n'
        '  {"id": "a", "backend": {"type": "passt"}},\n'
        '  {"id": "b", "id": "c", "backend": {"type": "passt"}}\n'
        "]}"
    )
    path = write_vm(text, suffix=".json")
    assert lines(path) == [f"{path}:3:15: net[1].id: `id` is given twice in one object"]


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_bytes(b"[machine]\nvcpu_count = 1 # \xff\n")
    assert lines(str(path)) == [f"{path}:2:18: (document): the file is not UTF-8 text"]


def test_not_utf8_column_counts_characters(tmp_path: Path) -> None:
    path = tmp_path / "vm.toml"
    path.write_bytes("# é".encode() + b"\xff\n")
    assert lines(str(path)) == [f"{path}:1:4: (document): the file is not UTF-8 text"]


@pytest.mark.parametrize("name", ["vm.yaml", "vm", "vm.toml.bak", "vm.jsonc"])
def test_unknown_suffix(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("[machine]\n")
    assert lines(str(path)) == [f"{path}:1:1: (document): a VM file ends in .toml or .json"]


@pytest.mark.parametrize("name", ["VM.TOML", "vm.Json"])
def test_suffix_case_does_not_matter(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("{}" if name.lower().endswith(".json") else "")
    assert load(str(path)).resources == model.VmResources()


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    assert lines(str(path)) == [
        f"{path}:1:1: (document): cannot read the file: No such file or directory"
    ]


def test_directory_as_the_file(tmp_path: Path) -> None:
    path = tmp_path / "dir.toml"
    path.mkdir()
    assert lines(str(path)) == [f"{path}:1:1: (document): cannot read the file: Is a directory"]


@pytest.mark.parametrize(
    ("text", "suffix"),
    [
        ("[" * 5000 + "]" * 5000, ".json"),
        ('{"a": ' * 5000 + "1" + "}" * 5000, ".json"),
        ("a = " + "[" * 5000 + "]" * 5000 + "\n", ".toml"),
    ],
    ids=["json-array", "json-object", "toml-array"],
)
def test_deep_nesting_is_a_config_error(write_vm, text: str, suffix: str) -> None:
    with pytest.raises(ConfigError):
        load(write_vm(text, suffix=suffix))
