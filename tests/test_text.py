import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.text import (
    Template,
    TemplateError,
    check_vars,
    ddt_group,
    gb2312_problems,
    parse_ddt_params,
    provider_length,
    replace_separators,
    separator_problem,
)


def test_problems_name_each_character_and_index():
    problems = gb2312_problems("王堃说體验€ok")
    assert [(p.index, p.char) for p in problems] == [(1, "堃"), (3, "體"), (5, "€")]
    assert problems[0].codepoint == "U+5803"


@pytest.mark.parametrize("char", ["體", "堃", "·", "—"])
def test_gbk_is_wider_than_gb2312(char):
    assert gb2312_problems(char, "gb2312")
    assert not gb2312_problems(char, "gbk")


def test_emoji_fails_even_in_gb18030_free_channel():
    assert gb2312_problems("hi 😀") and not gb2312_problems("hi 😀", "gb18030")


@given(st.text(max_size=50))
def test_checker_agrees_with_str_encode(text):
    problems = gb2312_problems(text)
    try:
        text.encode("gb2312")
        ok = True
    except UnicodeEncodeError:
        ok = False
    assert ok == (problems == [])
    for p in problems:
        assert text[p.index] == p.char
        with pytest.raises(UnicodeEncodeError):
            p.char.encode("gb2312")


def test_length_counts_characters_not_bytes():
    assert provider_length("验证码123") == 6


def test_template_maps_names_in_order_of_first_appearance():
    t = Template.parse("{name}您好，验证码{code}，{name}请在{minutes}分钟内输入")
    assert t.names == ("name", "code", "minutes")
    assert t.provider_text == "{value0}您好，验证码{value1}，{value0}请在{value2}分钟内输入"
    assert t.render({"name": "王", "code": "1", "minutes": "5"}) == "王您好，验证码1，王请在5分钟内输入"


def test_template_without_variables_is_an_error():
    with pytest.raises(TemplateError):
        Template.parse("no variables")


def test_missing_and_extra_variables():
    t = Template.parse("{a}{b}")
    assert check_vars(t, {"a": "1", "c": "2"}) == [
        "variable 'b' is missing",
        "variable 'c' is not in the template",
    ]


def test_separators():
    assert separator_problem("a,b") and separator_problem("a;b") and not separator_problem("a b")
    assert replace_separators("a,b;c") == "a，b；c"


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
            st.lists(
                st.text(min_size=1).filter(lambda v: "," not in v and ";" not in v),
                min_size=2,
                max_size=2,
            ),
        ),
        min_size=1,
        max_size=20,
    )
)
def test_ddt_params_round_trip(groups):
    params = ";".join(ddt_group(m, v) for m, v in groups)
    assert parse_ddt_params(params) == [[m, *v] for m, v in groups]


@given(
    st.lists(
        st.tuples(
            st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True),
            st.lists(
                st.text(alphabet=st.characters(codec="gb2312", exclude_characters=",;"), min_size=1, max_size=8),
                min_size=2,
                max_size=2,
            ),
        ),
        min_size=1,
        max_size=10,
        unique_by=lambda g: g[0],
    )
)
def test_ddt_params_round_trip_through_the_wire_and_the_simulators_parser(groups):
    """What the client puts on the wire (encoded once for the double decoding, then form-encoded
    as GB2312) is what the simulator, decoding as the PHP server does, renders."""
    from urllib.parse import urlencode

    from devkit.simulator import php_urldecode, render_ddt
    from workers.provider import _pre_encode, parse_form

    template = "{value0}您好{value1}"
    params = ";".join(ddt_group(m, v) for m, v in groups)
    body = urlencode(
        {"msg": _pre_encode(template, "gb2312"), "params": _pre_encode(params, "gb2312")}, encoding="gb2312"
    )
    raw = parse_form(body.encode("ascii"))
    decoded = {k: php_urldecode(raw[k]).decode("gb2312") for k in ("msg", "params")}
    mobiles, texts = render_ddt(decoded["msg"], decoded["params"])
    assert mobiles == [m for m, _ in groups]
    assert texts == [f"{v[0]}您好{v[1]}" for _, v in groups]
