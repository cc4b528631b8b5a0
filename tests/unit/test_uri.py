import pytest

from mlflow_bluegreen.worker.model.uri import BadModelUri, Selector, parse_model_uri


@pytest.mark.parametrize(
    ("uri", "selector", "value", "name"),
    [
        ("models:/iris@champion", Selector.ALIAS, "champion", "iris"),
        ("models:/my@model@prod", Selector.ALIAS, "prod", "my@model"),
        ("models:/iris/Production", Selector.STAGE, "Production", "iris"),
        ("models:/iris/staging", Selector.STAGE, "staging", "iris"),
        ("models:/iris/latest", Selector.LATEST, None, "iris"),
        ("models:/iris/LATEST", Selector.LATEST, None, "iris"),
    ],
)
def test_tracked_uris(uri: str, selector: Selector, value: str | None, name: str) -> None:
    ref = parse_model_uri(uri)
    assert ref.tracked
    assert (ref.selector, ref.selector_value, ref.name) == (selector, value, name)
    # Workers always start on the pinned version, never on the alias.
    assert ref.launch_uri("7") == f"models:/{name}/7"


@pytest.mark.parametrize(
    ("uri", "version"),
    [
        ("models:/iris/3", "3"),
        ("models:/m-0123456789abcdef", None),
        ("runs:/abc/model", None),
        ("/srv/models/iris", None),
        ("s3://bucket/iris", None),
        ("file:///srv/iris", None),
    ],
)
def test_fixed_uris_are_served_as_given(uri: str, version: str | None) -> None:
    ref = parse_model_uri(uri)
    assert not ref.tracked
    assert ref.version == version
    assert ref.launch_uri("whatever") == uri


@pytest.mark.parametrize(
    "uri",
    [
        "",
        "   ",
        "models:/",
        "models:",
        "models:/a/b/c",
        "models:/iris/",
        "models:/@x",
        "models:/x@",
    ],
)
def test_malformed_models_uris_say_what_is_expected(uri: str) -> None:
    with pytest.raises(BadModelUri) as caught:
        parse_model_uri(uri)
    assert "models:/" in str(caught.value) or "empty" in str(caught.value)


def test_first_exception_line_is_the_root_cause_not_mlflows_wrapper() -> None:
    from mlflow_bluegreen.worker.process.output import first_exception

    output = [
        "Traceback (most recent call last):",
        '  File "x.py", line 1, in <module>',
        "RuntimeError: this version cannot load: weights file missing",
        "Traceback (most recent call last):",
        "Exception: Command '['bash', '-c', 'exec uvicorn']' returned non zero return code.",
    ]
    assert first_exception(output) == "RuntimeError: this version cannot load: weights file missing"
    assert first_exception(["INFO: started", "all good"]) is None
