"""Unit tests for tools.web: SSRF checks, manual redirects, body limits, HTML→text, Tavily.

No network: every HTTP exchange goes through ``httpx.MockTransport`` and every name lookup through
a fake resolver passed as a parameter.
"""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tools.web import (
    FetchError,
    TavilySearch,
    UnsafeURLError,
    WebSearchError,
    WebSearchResult,
    check_url_allowed,
    fetch_url,
    html_to_text,
    system_resolver,
)

PUBLIC_IP = "93.184.215.14"
PUBLIC_IP_2 = "93.184.215.15"
PUBLIC_V6 = "2606:2800:21f:cb07:6820:80da:af6b:8b2c"

DNS: dict[str, list[str]] = {
    "example.com": [PUBLIC_IP],
    "www.example.com": [PUBLIC_IP_2],
    "dual.example.com": [PUBLIC_IP, PUBLIC_V6],
    "intranet.example.com": ["10.1.2.3"],
    "mixed.example.com": [PUBLIC_IP, "192.168.1.20"],
    "rebind.example.com": ["127.0.0.1"],
}


def fake_resolver(host: str) -> list[str]:
    try:
        return DNS[host]
    except KeyError:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known") from None


def must_not_resolve(host: str) -> list[str]:
    raise AssertionError(f"resolver must not be called for {host}")


Handler = Callable[[httpx.Request], httpx.Response]


class Recorder:
    """MockTransport handler that records requests and answers from a per-Host table."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = f"{request.headers['host']}{request.url.raw_path.decode()}"
        handler = self.routes.get(key)
        if handler is None:
            return httpx.Response(404, text=f"no route {key}")
        return handler(request)

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def html(body: str, status: int = 200, **headers: str) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            status,
            content=body.encode(),
            headers={"content-type": "text/html; charset=utf-8", **headers},
        )

    return handler


def redirect(location: str, status: int = 302) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, headers={"location": location})

    return handler


# --------------------------------------------------------------------------------------------
# check_url_allowed
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1/", "loopback"),
        ("http://127.8.9.10:8080/x", "loopback"),
        ("http://[::1]/", "loopback"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://172.31.255.255/", "private"),
        ("https://192.168.0.1/admin", "private"),
        ("http://169.254.169.254/latest/meta-data/", "cloud metadata"),
        ("http://169.254.1.1/", "link-local"),
        ("http://[fd00:ec2::254]/latest/meta-data/", "cloud metadata"),
        ("http://100.100.100.200/latest/meta-data/", "cloud metadata"),
        ("http://[::ffff:127.0.0.1]/", "IPv4-mapped"),
        ("http://[::ffff:169.254.169.254]/", "IPv4-mapped"),
        ("http://[2002:7f00:1::]/", "6to4"),
        ("http://[64:ff9b::a00:1]/", "NAT64"),
        ("http://100.64.0.1/", "shared address space"),
        ("http://100.127.255.254/", "shared address space"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://[::]/", "unspecified"),
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://[fe80::1]/", "link-local"),
        ("http://[fc00::1]/", "private"),
        ("http://192.0.2.1/", "private"),  # TEST-NET-1 documentation range
    ],
)
def test_non_public_ip_literals_are_refused(url: str, reason: str) -> None:
    with pytest.raises(UnsafeURLError, match=reason) as info:
        check_url_allowed(url, resolver=must_not_resolve)
    assert "refusing host" in str(info.value)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://intranet.example.com/", r"intranet\.example\.com.*10\.1\.2\.3.*private"),
        ("http://rebind.example.com/", r"rebind\.example\.com.*127\.0\.0\.1.*loopback"),
        # one public and one private answer: refused because ANY address is private
        ("http://mixed.example.com/", r"mixed\.example\.com.*192\.168\.1\.20"),
        ("http://unknown.invalid/", r"unknown\.invalid.*could not be resolved"),
    ],
)
def test_hostnames_resolving_to_private_addresses_are_refused(url: str, message: str) -> None:
    with pytest.raises(UnsafeURLError, match=message):
        check_url_allowed(url, resolver=fake_resolver)


@pytest.mark.parametrize(
    "url",
    [
        "http://metadata.google.internal/computeMetadata/v1/",
        "http://METADATA.google.internal./computeMetadata/v1/",
        "http://metadata/",
        "http://instance-data/latest/",
        "http://localhost:8000/",
        "http://api.localhost/",
    ],
)
def test_special_host_names_are_refused_without_resolving(url: str) -> None:
    with pytest.raises(UnsafeURLError, match="refusing host"):
        check_url_allowed(url, resolver=must_not_resolve)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("file:///etc/passwd", "scheme 'file'"),
        ("ftp://example.com/pub/file.txt", "scheme 'ftp'"),
        ("gopher://example.com/", "scheme 'gopher'"),
        ("javascript:alert(1)", "scheme 'javascript'"),
        ("example.com/no-scheme", "scheme"),
        ("http://user:secret@example.com/", "credentials"),
        ("https://user@example.com/", "credentials"),
        ("http:///path-only", "no host"),
    ],
)
def test_bad_schemes_credentials_and_missing_host_are_refused(url: str, message: str) -> None:
    with pytest.raises(UnsafeURLError, match=message):
        check_url_allowed(url, resolver=fake_resolver)


def test_credentials_message_does_not_echo_the_password() -> None:
    with pytest.raises(UnsafeURLError) as info:
        check_url_allowed("http://user:hunter2@example.com/", resolver=fake_resolver)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    [
        "http://example.com/",
        "https://example.com:8443/odd/port?q=1",
        "https://dual.example.com/",
        f"http://{PUBLIC_IP}/",
        f"http://[{PUBLIC_V6}]/",
        "http://8.8.8.8:53/",
    ],
)
def test_public_destinations_are_allowed(url: str) -> None:
    check_url_allowed(url, resolver=fake_resolver)  # must not raise


def test_default_resolver_uses_every_getaddrinfo_address(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake_getaddrinfo(host: str, port: object, *args: object, **kwargs: object) -> list[object]:
        assert host == "sneaky.example.com"
        return [
            (socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_IP, 0)),
            (socket.AF_INET6, socket.SOCK_STREAM, 6, "", ("::1", 0, 0, 0)),
        ]

    monkeypatch.setattr(socket, "getaddrinfo", fake_getaddrinfo)
    assert system_resolver("sneaky.example.com") == [PUBLIC_IP, "::1"]
    with pytest.raises(UnsafeURLError, match=r"::1 \(loopback"):
        check_url_allowed("https://sneaky.example.com/")


# --------------------------------------------------------------------------------------------
# fetch_url
# --------------------------------------------------------------------------------------------

PAGE = """<!doctype html>
<html><head><title>  Acme   Widgets </title><style>body{color:red}</style>
<script>var secret = "do-not-show";</script></head>
<body><nav><a href="/">Home</a> | <a href="/about">About nav link</a></nav>
<h1>Widgets that work</h1><p>Our widgets are <b>fast</b> and cheap.</p>
<ul><li>One</li><li>Two</li></ul><noscript>enable js</noscript></body></html>"""


async def test_fetch_html_to_text_keeps_title_and_drops_script_style_nav() -> None:
    recorder = Recorder({"example.com/page": html(PAGE)})
    async with recorder.client() as client:
        page = await fetch_url("https://example.com/page", client=client, resolver=fake_resolver)

    assert page.url == "https://example.com/page"
    assert page.status == 200
    assert page.content_type == "text/html"
    assert page.title == "Acme Widgets"
    assert page.text.splitlines() == [
        "Widgets that work",
        "Our widgets are fast and cheap.",
        "One",
        "Two",
    ]
    for hidden in ("do-not-show", "color:red", "About nav link", "enable js", "Acme"):
        assert hidden not in page.text
    assert page.truncated is False


async def test_fetch_pins_connection_to_validated_address() -> None:
    recorder = Recorder({"example.com:8443/a": html("<p>hi</p>")})
    async with recorder.client() as client:
        page = await fetch_url("https://example.com:8443/a", client=client, resolver=fake_resolver)
    assert page.text == "hi"
    (request,) = recorder.requests
    assert request.url.host == PUBLIC_IP  # connects to the checked address ...
    assert request.url.port == 8443
    assert request.headers["host"] == "example.com:8443"  # ... but still talks to the named host
    assert request.extensions["sni_hostname"] == "example.com"  # and TLS verifies that name


async def test_fetch_refuses_private_url_before_any_request() -> None:
    recorder = Recorder({})
    async with recorder.client() as client:
        with pytest.raises(UnsafeURLError, match="private"):
            await fetch_url("http://intranet.example.com/", client=client, resolver=fake_resolver)
    assert recorder.requests == []


async def test_redirect_to_metadata_endpoint_is_refused_at_the_hop() -> None:
    recorder = Recorder(
        {
            "example.com/start": redirect("http://169.254.169.254/latest/meta-data/"),
            "169.254.169.254/latest/meta-data/": html("<p>iam credentials</p>"),
        }
    )
    async with recorder.client() as client:
        with pytest.raises(UnsafeURLError, match=r"redirect from .*example\.com.*metadata"):
            await fetch_url("http://example.com/start", client=client, resolver=fake_resolver)

    assert [str(r.url) for r in recorder.requests] == [f"http://{PUBLIC_IP}/start"]
    assert all(r.url.host != "169.254.169.254" for r in recorder.requests)
    assert all("169.254.169.254" not in r.headers["host"] for r in recorder.requests)


async def test_redirect_to_hostname_resolving_private_is_refused() -> None:
    recorder = Recorder({"example.com/": redirect("https://intranet.example.com/secret", 301)})
    async with recorder.client() as client:
        with pytest.raises(UnsafeURLError, match=r"10\.1\.2\.3 \(private"):
            await fetch_url("http://example.com/", client=client, resolver=fake_resolver)
    assert len(recorder.requests) == 1


async def test_redirect_to_file_scheme_is_refused() -> None:
    recorder = Recorder({"example.com/": redirect("file:///etc/passwd")})
    async with recorder.client() as client:
        with pytest.raises(UnsafeURLError, match="scheme 'file'"):
            await fetch_url("http://example.com/", client=client, resolver=fake_resolver)


async def test_relative_redirect_is_followed_against_current_url() -> None:
    recorder = Recorder(
        {
            "example.com/old/page": redirect("../new/page?x=1#frag", 308),
            "example.com/new/page?x=1": redirect("https://www.example.com/final"),
            "www.example.com/final": html("<title>Final</title><p>done</p>"),
        }
    )
    # follow_redirects=True on the caller's client must not bypass the per-hop check
    transport = httpx.MockTransport(recorder)
    async with httpx.AsyncClient(transport=transport, follow_redirects=True) as client:
        page = await fetch_url(
            "https://example.com/old/page", client=client, resolver=fake_resolver
        )
    assert page.url == "https://www.example.com/final"
    assert page.title == "Final"
    assert page.text == "done"
    assert [r.headers["host"] for r in recorder.requests] == [
        "example.com",
        "example.com",
        "www.example.com",
    ]
    assert recorder.requests[1].url.raw_path == b"/new/page?x=1"
    assert recorder.requests[2].url.host == PUBLIC_IP_2


async def test_too_many_redirects_raise_fetch_error() -> None:
    recorder = Recorder({f"example.com/{i}": redirect(f"/{i + 1}") for i in range(10)})
    async with recorder.client() as client:
        with pytest.raises(FetchError, match="too many redirects"):
            await fetch_url(
                "http://example.com/0", client=client, resolver=fake_resolver, max_redirects=3
            )
    assert len(recorder.requests) == 4  # the first request plus three followed redirects


async def test_exactly_max_redirects_is_fine() -> None:
    routes: dict[str, Handler] = {f"example.com/{i}": redirect(f"/{i + 1}") for i in range(3)}
    routes["example.com/3"] = html("<p>end</p>")
    recorder = Recorder(routes)
    async with recorder.client() as client:
        page = await fetch_url(
            "http://example.com/0", client=client, resolver=fake_resolver, max_redirects=3
        )
    assert page.text == "end"


async def test_body_is_truncated_at_max_bytes() -> None:
    served: list[int] = []

    class Chunks(httpx.AsyncByteStream):
        async def __aiter__(self) -> AsyncIterator[bytes]:
            for _ in range(100):
                served.append(1)
                yield b"a" * 1000

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "text/plain"}, stream=Chunks())

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        page = await fetch_url(
            "http://example.com/big", client=client, resolver=fake_resolver, max_bytes=2500
        )
    assert page.text == "a" * 2500
    assert page.truncated is True
    assert page.content_type == "text/plain"
    assert page.title is None
    assert len(served) < 100  # stopped reading instead of draining the body


async def test_small_body_is_not_marked_truncated() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text="short", headers={"content-type": "text/plain"})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        page = await fetch_url(
            "http://example.com/", client=client, resolver=fake_resolver, max_bytes=5
        )
    assert (page.text, page.truncated) == ("short", False)


@pytest.mark.parametrize("content_type", ["application/pdf", "image/png", "application/zip", ""])
async def test_non_text_content_is_refused(content_type: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        headers = {"content-type": content_type} if content_type else {}
        return httpx.Response(200, content=b"%PDF-1.7 \x00\x01", headers=headers)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(FetchError, match="unsupported content type"):
            await fetch_url("http://example.com/f", client=client, resolver=fake_resolver)


async def test_json_is_returned_as_text() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"a": 1})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        page = await fetch_url("http://example.com/j", client=client, resolver=fake_resolver)
    assert json.loads(page.text) == {"a": 1}
    assert page.content_type == "application/json"


async def test_http_error_status_raises_fetch_error() -> None:
    recorder = Recorder({})  # every path is a 404
    async with recorder.client() as client:
        with pytest.raises(FetchError, match=r"HTTP 404 from example\.com"):
            await fetch_url("http://example.com/missing", client=client, resolver=fake_resolver)


async def test_connect_error_tries_next_validated_address_then_fails() -> None:
    attempted: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        attempted.append(request.url.host)
        raise httpx.ConnectError("connection refused", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        with pytest.raises(FetchError, match="could not connect"):
            await fetch_url("http://dual.example.com/", client=client, resolver=fake_resolver)
    assert attempted == [PUBLIC_IP, PUBLIC_V6]


def test_html_to_text_respects_declared_charset() -> None:
    body = "<title>Caf\u00e9</title><p>na\u00efve</p>".encode("latin-1")
    assert html_to_text(body, "latin-1") == ("Caf\u00e9", "na\u00efve")


# --------------------------------------------------------------------------------------------
# Tavily
# --------------------------------------------------------------------------------------------

API_KEY = "tvly-SECRET-0123456789"


async def test_tavily_request_shape_and_parsing() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(
            200,
            json={
                "query": "acme widgets",
                "results": [
                    {
                        "title": "Acme",
                        "url": "https://acme.example/",
                        "content": "Widgets.",
                        "score": 0.91,
                        "raw_content": None,
                    },
                    {
                        "title": "Other",
                        "url": "https://other.example/",
                        "content": "",
                        "score": 0.2,
                    },
                ],
                "response_time": 0.5,
            },
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        tavily = TavilySearch(API_KEY, client=client, base_url="https://tavily.test/")
        results = await tavily.search("acme widgets", max_results=2)

    (request,) = seen
    assert request.method == "POST"
    assert str(request.url) == "https://tavily.test/search"
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content) == {
        "query": "acme widgets",
        "max_results": 2,
        "search_depth": "basic",
    }
    assert results == [
        WebSearchResult(title="Acme", url="https://acme.example/", content="Widgets.", score=0.91),
        WebSearchResult(title="Other", url="https://other.example/", content="", score=0.2),
    ]


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (401, {"detail": {"error": f"Unauthorized: invalid API key {API_KEY}"}}, "HTTP 401"),
        (429, {"detail": {"error": "rate limit exceeded"}}, r"HTTP 429 \(rate limit exceeded\)"),
        (432, {"detail": {"error": "plan limit"}}, "HTTP 432"),
        (500, "oops, not json", "HTTP 500"),
    ],
)
async def test_tavily_http_errors_map_to_web_search_error_without_key(
    status: int, body: object, expected: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(body, str):
            return httpx.Response(status, text=body)
        return httpx.Response(status, json=body)

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        tavily = TavilySearch(API_KEY, client=client)
        with pytest.raises(WebSearchError, match=expected) as info:
            await tavily.search("q")
    assert API_KEY not in str(info.value)
    assert info.value.__cause__ is None


async def test_tavily_transport_error_and_bad_payload() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError(f"boom {request.headers['authorization']}", request=request)

    async with httpx.AsyncClient(transport=httpx.MockTransport(broken)) as client:
        with pytest.raises(WebSearchError, match="request failed") as info:
            await TavilySearch(API_KEY, client=client).search("q")
    assert API_KEY not in str(info.value)

    def garbage(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"unexpected": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(garbage)) as client:
        with pytest.raises(WebSearchError, match="unexpected response"):
            await TavilySearch(API_KEY, client=client).search("q")


async def test_tavily_validates_arguments_and_hides_key_in_repr() -> None:
    tavily = TavilySearch(API_KEY)
    assert API_KEY not in repr(tavily)
    with pytest.raises(ValueError, match="query"):
        await tavily.search("   ")
    with pytest.raises(ValueError, match="max_results"):
        await tavily.search("q", max_results=0)
    with pytest.raises(ValueError, match="API key"):
        TavilySearch("")
