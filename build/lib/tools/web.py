"""Network layer of the research tools: SSRF-safe page fetching and Tavily web search.

`fetch_url` only ever connects to addresses that `check_url_allowed` accepted:

* only ``http``/``https``, no ``user:password@`` credentials;
* the host is resolved (every address, not just the first) and the URL is refused if ANY address
  is private, loopback, link-local, multicast, reserved, unspecified, shared (100.64.0.0/10), not
  globally routable, a cloud-metadata endpoint, or an IPv6 address embedding such an IPv4 address
  (IPv4-mapped, 6to4, Teredo, NAT64);
* redirects are followed by hand and every hop is checked again before it is requested;
* the connection is pinned to the validated address (the request goes to the IP literal with the
  original ``Host`` header and TLS SNI / certificate check against the original host name), so a
  second DNS answer cannot swap in an internal address (DNS rebinding).

Residual risks, by design kept small rather than handled here:

* pinning holds for the clients this module creates (``trust_env=False``: no environment proxy).
  A caller-supplied ``httpx.AsyncClient`` that routes through an HTTP proxy lets the proxy resolve
  the host again, so pinning (not the address check) is lost for it;
* the body limit counts decoded bytes. ``Accept-Encoding: identity`` is requested, but a server
  may still compress; one compressed network chunk can expand to a large block before the limit
  applies (bounded by httpx's chunk size times the compression ratio).

Nothing here touches the network at import time.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import httpx
from bs4 import BeautifulSoup
from pydantic import BaseModel, ConfigDict, ValidationError

__all__ = [
    "FetchError",
    "FetchedPage",
    "Resolver",
    "TavilySearch",
    "UnsafeURLError",
    "WebSearchError",
    "WebSearchResult",
    "check_url_allowed",
    "fetch_url",
    "html_to_text",
    "system_resolver",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str], list[str]]
"""Maps a host name (IDNA/ASCII, no brackets) to every IP address it resolves to, as strings."""

ALLOWED_SCHEMES: Final = frozenset({"http", "https"})
REDIRECT_STATUSES: Final = frozenset({301, 302, 303, 307, 308})
USER_AGENT: Final = "mkt-agents-research/0.1 (+https://github.com/)"

# Cloud instance-metadata services. All of them are also non-global, but naming them gives a
# clearer refusal message (and keeps them refused should a stdlib table ever change).
METADATA_ADDRESSES: Final[frozenset[IPAddress]] = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack, DigitalOcean, OCI
        ipaddress.ip_address("169.254.170.2"),  # AWS ECS task metadata
        ipaddress.ip_address("169.254.170.23"),  # AWS EKS pod identity agent
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("fd00:ec2::23"),  # AWS EKS pod identity agent over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
        ipaddress.ip_address("192.0.0.192"),  # Oracle Cloud (legacy)
    }
)
METADATA_HOSTNAMES: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "metadata.azure.internal",
        "instance-data",
        "instance-data.ec2.internal",
    }
)
_SHARED_NETWORK: Final = ipaddress.ip_network("100.64.0.0/10")  # RFC 6598 carrier-grade NAT
_NAT64_NETWORK: Final = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052 well-known prefix

_TEXT_TYPES: Final = frozenset(
    {"application/json", "application/ld+json", "application/xml", "application/xhtml+xml"}
)
_HTML_TYPES: Final = frozenset({"text/html", "application/xhtml+xml"})
_DROP_TAGS: Final = (
    "script",
    "style",
    "nav",
    "noscript",
    "template",
    "svg",
    "iframe",
    "head",
    "title",
)
_BLOCK_TAGS: Final = (
    "address",
    "article",
    "aside",
    "blockquote",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hr",
    "li",
    "main",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
)


class UnsafeURLError(ValueError):
    """The URL is not allowed: bad scheme, credentials, or a non-public destination."""


class FetchError(RuntimeError):
    """The page could not be fetched or is not usable text."""


class WebSearchError(RuntimeError):
    """The web search provider failed; the message never contains the API key."""


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """A fetched page reduced to readable text."""

    url: str
    """Final URL, after redirects."""
    status: int
    title: str | None
    text: str
    content_type: str
    """Media type without parameters, e.g. ``text/html``."""
    truncated: bool = False
    """True when the body was cut at ``max_bytes``."""


# --------------------------------------------------------------------------------------------
# URL / address checks
# --------------------------------------------------------------------------------------------


def system_resolver(host: str) -> list[str]:
    """Resolve ``host`` with ``socket.getaddrinfo`` and return every address (blocking)."""
    infos = socket.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    addresses: list[str] = []
    for _family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        if address not in addresses:
            addresses.append(address)
    return addresses


def _embedded_ipv4(address: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    if address.ipv4_mapped is not None:
        return "IPv4-mapped", address.ipv4_mapped
    if address.sixtofour is not None:
        return "6to4", address.sixtofour
    if address.teredo is not None:
        return "Teredo", address.teredo[1]
    if address in _NAT64_NETWORK:
        return "NAT64", ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _address_problem(address: IPAddress) -> str | None:
    """Why ``address`` must not be contacted, or None when it is a public unicast address."""
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
    if address in METADATA_ADDRESSES:
        return "cloud metadata endpoint"
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            kind, inner = embedded
            inner_problem = _address_problem(inner)
            if inner_problem is not None:
                return f"{kind} IPv6 address of {inner} ({inner_problem})"
    if address.is_unspecified:
        return "unspecified address"
    if address.is_loopback:
        return "loopback address"
    if address.is_link_local:
        return "link-local address"
    if address.is_multicast:
        return "multicast address"
    if isinstance(address, ipaddress.IPv4Address) and address in _SHARED_NETWORK:
        return "shared address space (100.64.0.0/10)"
    if address.is_reserved:
        return "reserved address"
    if address.is_private:
        return "private address"
    if not address.is_global:
        return "not a globally routable address"
    return None


def _parse_url(url: str | httpx.URL) -> httpx.URL:
    try:
        parsed = url if isinstance(url, httpx.URL) else httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        raise UnsafeURLError(f"invalid URL: {exc}") from None
    scheme = parsed.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        shown = scheme or "(none)"
        raise UnsafeURLError(f"URL scheme {shown!r} is not allowed; only http and https")
    if parsed.userinfo:
        raise UnsafeURLError("URLs with embedded credentials (user:password@host) are not allowed")
    if not parsed.raw_host:
        raise UnsafeURLError("URL has no host")
    return parsed


def _host_of(url: httpx.URL) -> str:
    """ASCII (IDNA) host without brackets, lower case."""
    return url.raw_host.decode("ascii").lower()


def _checked_addresses(url: httpx.URL, resolver: Resolver) -> list[IPAddress]:
    """Validate an already parsed URL; return the addresses it may be fetched from."""
    host = _host_of(url)
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        problem = _address_problem(literal)
        if problem is not None:
            raise UnsafeURLError(f"refusing host {host}: {problem}")
        return [literal]

    name = host.rstrip(".")
    if name in METADATA_HOSTNAMES:
        raise UnsafeURLError(f"refusing host {host}: cloud metadata host name")
    if name == "localhost" or name.endswith(".localhost"):
        raise UnsafeURLError(f"refusing host {host}: loopback host name")

    try:
        resolved = resolver(host)
    except (OSError, UnicodeError) as exc:
        raise UnsafeURLError(f"refusing host {host}: it could not be resolved ({exc})") from None
    if not resolved:
        raise UnsafeURLError(f"refusing host {host}: it resolved to no address")

    addresses: list[IPAddress] = []
    for raw in resolved:
        try:
            address = ipaddress.ip_address(raw)
        except ValueError:
            raise UnsafeURLError(
                f"refusing host {host}: resolver returned an invalid address {raw!r}"
            ) from None
        problem = _address_problem(address)
        if problem is not None:
            raise UnsafeURLError(f"refusing host {host}: it resolves to {address} ({problem})")
        addresses.append(address)
    return addresses


def check_url_allowed(url: str, *, resolver: Resolver | None = None) -> None:
    """Raise `UnsafeURLError` unless ``url`` is http(s) to a host whose addresses are all public.

    ``resolver`` defaults to `system_resolver` (``socket.getaddrinfo``, blocking).
    """
    _checked_addresses(_parse_url(url), resolver or system_resolver)


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------


def _new_client(timeout: float) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        follow_redirects=False,
        timeout=httpx.Timeout(timeout),
        trust_env=False,  # no proxy from the environment: it would defeat address pinning
        headers={"User-Agent": USER_AGENT},
    )


async def _send_pinned(
    client: httpx.AsyncClient,
    url: httpx.URL,
    addresses: list[IPAddress],
    request_timeout: float,
) -> httpx.Response:
    """GET ``url`` over a connection to one of the validated ``addresses`` (streamed)."""
    headers = {
        "Accept": "text/html,application/xhtml+xml,text/plain;q=0.9,*/*;q=0.5",
        "Accept-Encoding": "identity",
    }
    host = _host_of(url)
    try:
        ipaddress.ip_address(host)
        is_literal = True  # already an address: nothing to pin
    except ValueError:
        is_literal = False
    last_error: httpx.HTTPError | None = None
    for address in addresses:
        extensions: dict[str, Any] = {}
        target = url
        request_headers = dict(headers)
        if not is_literal:
            target = url.copy_with(host=str(address))
            request_headers["Host"] = url.netloc.decode("ascii")
            extensions["sni_hostname"] = host
        request = client.build_request(
            "GET",
            target,
            headers=request_headers,
            timeout=httpx.Timeout(request_timeout),
            extensions=extensions,
        )
        try:
            return await client.send(request, stream=True, follow_redirects=False)
        except httpx.ConnectError as exc:  # try the next validated address
            last_error = exc
        except httpx.TimeoutException:
            raise FetchError(f"timed out fetching {host}") from None
        except httpx.HTTPError as exc:
            raise FetchError(f"could not fetch {host}: {type(exc).__name__}: {exc}") from None
    raise FetchError(f"could not connect to {host}: {last_error}")


def _media_type(response: httpx.Response) -> str:
    value: str = response.headers.get("content-type", "")
    return value.split(";", 1)[0].strip().lower()


def _is_text_type(media_type: str) -> bool:
    return (
        media_type.startswith("text/")
        or media_type in _TEXT_TYPES
        or media_type.endswith(("+xml", "+json"))
    )


def _decode(body: bytes, charset: str | None) -> str:
    try:
        return body.decode(charset or "utf-8", errors="replace")
    except LookupError:  # unknown charset name
        return body.decode("utf-8", errors="replace")


_SPACES = re.compile(r"[ \t\f\v\r\u00a0]+")


def _tidy(text: str) -> str:
    lines = (_SPACES.sub(" ", line).strip() for line in text.split("\n"))
    return "\n".join(line for line in lines if line)


def html_to_text(body: bytes | str, charset: str | None = None) -> tuple[str | None, str]:
    """Return ``(title, readable text)``; scripts, styles, navigation and <head> are dropped."""
    if isinstance(body, bytes) and charset:
        body = _decode(body, charset)
    soup = BeautifulSoup(body, "html.parser")
    title: str | None = None
    if soup.title is not None:
        title = " ".join(soup.title.get_text(" ").split()) or None
    for tag in soup.find_all(_DROP_TAGS):
        tag.decompose()
    for br in soup.find_all("br"):
        br.replace_with("\n")
    for block in soup.find_all(_BLOCK_TAGS):
        block.insert_before("\n")
        block.insert_after("\n")
    return title, _tidy(soup.get_text())


async def _read_page(response: httpx.Response, url: httpx.URL, max_bytes: int) -> FetchedPage:
    host = _host_of(url)
    status = response.status_code
    if status >= 400:
        raise FetchError(f"HTTP {status} from {host}")
    if not 200 <= status < 300:
        raise FetchError(f"unexpected HTTP {status} from {host}")
    media_type = _media_type(response)
    if not _is_text_type(media_type):
        shown = media_type or "(missing)"
        raise FetchError(f"unsupported content type {shown} from {host}; only text is fetched")

    body = bytearray()
    truncated = False
    async for chunk in response.aiter_bytes():
        room = max_bytes - len(body)
        if len(chunk) > room:
            body += chunk[:room]
            truncated = True
            break
        body += chunk

    charset = response.charset_encoding
    if media_type in _HTML_TYPES:
        title, text = html_to_text(bytes(body), charset)
    else:
        title, text = None, _decode(bytes(body), charset)
    return FetchedPage(
        url=str(url),
        status=status,
        title=title,
        text=text,
        content_type=media_type,
        truncated=truncated,
    )


async def _fetch(
    client: httpx.AsyncClient,
    url: str,
    *,
    max_bytes: int,
    max_redirects: int,
    request_timeout: float,
    resolver: Resolver,
) -> FetchedPage:
    current = _parse_url(url)
    previous: httpx.URL | None = None
    for hop in range(max_redirects + 1):
        try:
            # getaddrinfo blocks: keep it off the event loop.
            addresses = await asyncio.to_thread(_checked_addresses, current, resolver)
        except UnsafeURLError as exc:
            if previous is None:
                raise
            raise UnsafeURLError(f"redirect from {previous} refused: {exc}") from None
        response = await _send_pinned(client, current, addresses, request_timeout)
        try:
            location = response.headers.get("location")
            if response.status_code in REDIRECT_STATUSES and location:
                if hop == max_redirects:
                    raise FetchError(
                        f"too many redirects (more than {max_redirects}) starting at {url}"
                    )
                try:
                    target = current.join(location).copy_with(fragment=None)
                except (httpx.InvalidURL, ValueError) as exc:
                    raise FetchError(f"invalid redirect Location from {current}: {exc}") from None
                previous = current
                try:
                    current = _parse_url(target)
                except UnsafeURLError as exc:
                    raise UnsafeURLError(f"redirect from {previous} refused: {exc}") from None
                continue
            return await _read_page(response, current, max_bytes)
        except httpx.TimeoutException:
            raise FetchError(f"timed out reading {_host_of(current)}") from None
        except httpx.HTTPError as exc:
            raise FetchError(
                f"error reading {_host_of(current)}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            await response.aclose()
    raise AssertionError("unreachable")  # pragma: no cover


async def fetch_url(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    max_bytes: int = 2_000_000,
    max_redirects: int = 5,
    timeout: float = 10.0,  # noqa: ASYNC109 - public API; enforced with asyncio.timeout below
    resolver: Resolver | None = None,
) -> FetchedPage:
    """Fetch a public http(s) page and reduce it to text.

    Every hop (the URL and each redirect target) passes `check_url_allowed` before it is
    requested, and the connection goes to the validated address. ``timeout`` bounds the whole
    fetch, redirects included. The body is read up to ``max_bytes`` (decoded) bytes.

    Raises `UnsafeURLError` for refused URLs and `FetchError` for everything else (network error,
    HTTP >= 400, non-text content type, too many redirects, timeout).
    """
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    if max_redirects < 0:
        raise ValueError("max_redirects must be >= 0")
    if timeout <= 0:
        raise ValueError("timeout must be positive")
    resolve = resolver or system_resolver
    options: dict[str, Any] = {
        "max_bytes": max_bytes,
        "max_redirects": max_redirects,
        "request_timeout": timeout,
        "resolver": resolve,
    }
    try:
        async with asyncio.timeout(timeout):
            if client is not None:
                return await _fetch(client, url, **options)
            async with _new_client(timeout) as own_client:
                return await _fetch(own_client, url, **options)
    except TimeoutError:
        raise FetchError(f"timed out after {timeout:g}s fetching {url}") from None


# --------------------------------------------------------------------------------------------
# Tavily web search
# --------------------------------------------------------------------------------------------


class WebSearchResult(BaseModel):
    """One web search hit."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    title: str = ""
    url: str
    content: str = ""
    score: float = 0.0


class _TavilyResponse(BaseModel):
    model_config = ConfigDict(extra="ignore")

    results: list[WebSearchResult]


class TavilySearch:
    """Tavily search over its REST API (``POST {base_url}/search``, ``Authorization: Bearer``).

    The API key is only ever put in the Authorization header; it is never logged, shown in
    ``repr`` or included in an exception message.
    """

    MAX_RESULTS: Final = 20

    def __init__(
        self,
        api_key: str,
        *,
        client: httpx.AsyncClient | None = None,
        base_url: str = "https://api.tavily.com",
        timeout: float = 30.0,
    ) -> None:
        if not api_key or not api_key.strip():
            raise ValueError("a Tavily API key is required")
        self._api_key = api_key.strip()
        self._client = client
        self._base_url = base_url.rstrip("/")
        self._timeout = timeout

    def __repr__(self) -> str:
        return f"TavilySearch(base_url={self._base_url!r}, api_key='***')"

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***")

    async def search(self, query: str, max_results: int = 5) -> list[WebSearchResult]:
        """Search the web; return at most ``max_results`` hits, best first."""
        if not query.strip():
            raise ValueError("query must not be empty")
        if not 1 <= max_results <= self.MAX_RESULTS:
            raise ValueError(f"max_results must be between 1 and {self.MAX_RESULTS}")
        payload = {"query": query, "max_results": max_results, "search_depth": "basic"}
        headers = {"Authorization": f"Bearer {self._api_key}", "Accept": "application/json"}
        url = f"{self._base_url}/search"
        try:
            if self._client is not None:
                response = await self._client.post(
                    url, json=payload, headers=headers, timeout=self._timeout
                )
            else:
                async with httpx.AsyncClient(timeout=self._timeout) as client:
                    response = await client.post(url, json=payload, headers=headers)
        except httpx.TimeoutException:
            raise WebSearchError(f"Tavily search timed out after {self._timeout:g}s") from None
        except httpx.HTTPError as exc:
            detail = self._redact(f"{type(exc).__name__}: {exc}")
            raise WebSearchError(f"Tavily search request failed: {detail}") from None

        if response.status_code >= 400:
            raise WebSearchError(
                f"Tavily search failed: HTTP {response.status_code}{self._error_detail(response)}"
            )
        try:
            parsed = _TavilyResponse.model_validate_json(response.content)
        except ValidationError:
            raise WebSearchError(
                f"Tavily search returned an unexpected response (HTTP {response.status_code})"
            ) from None
        return parsed.results[:max_results]

    def _error_detail(self, response: httpx.Response) -> str:
        """A short, key-free reason taken from Tavily's ``{"detail": {"error": ...}}`` body."""
        try:
            body = response.json()
        except ValueError:
            return ""
        detail: object = body.get("detail") if isinstance(body, dict) else None
        if isinstance(detail, dict):
            detail = detail.get("error") or detail.get("message")
        if not isinstance(detail, str) or not detail.strip():
            return ""
        return f" ({self._redact(detail.strip())[:200]})"
