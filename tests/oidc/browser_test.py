"""Sign-in with the company IdP in a real browser (Debian's chromium, driven by Playwright).

The IdP is a real OpenID Provider (npm oidc-provider, tests/oidc/provider.mjs), started here
on a loopback port; the browser signs in through its own login form. Checked: the gateway
starts and says so while the IdP is down; the authorization request (PKCE S256, nonce, state,
redirect URI); the landing page of finance, an admin (public client) and a team member;
sign-out; an account with neither tenant nor role; a tampered state; a used code; an expired
code; an ID token for another audience; keys rotated by the IdP (refreshed on the key id
miss, not within the cooldown); no secret in the gateway's debug log. Saves a screenshot of
each page under OUT.
"""
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request

from playwright.sync_api import sync_playwright

GATEWAY, PUBLIC_GATEWAY = os.environ["GATEWAY"], os.environ["PUBLIC_GATEWAY"]
GATEWAY_LOG, OUT = os.environ["GATEWAY_LOG"], os.environ["OUT"]
IDP = f"http://127.0.0.1:{os.environ['IDP_PORT']}"
# The flags of the console's browser test: headless, and nothing sent beyond loopback.
CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-default-apps", "--disable-domain-reliability",
    "--no-pings", "--disable-gpu",
]
# The provider's authorization codes live this long (provider.mjs).
CODE_TTL_SECS = 10
CALLBACK = re.compile(r".*/console/auth/callback.*")
# What must never reach the gateway's log: its client secret, codes, flow cookies (verifiers).
SECRETS = {"the client secret": os.environ["CONSOLE_SECRET"]}
checks = []


def check(condition, what):
    if not condition:
        raise AssertionError(what)
    checks.append(what)


class Provider:
    """The OpenID Provider as a child process; each start signs with a fresh key id."""

    def __init__(self):
        self.process = None
        self.log = open(os.path.join(os.environ["WORK"], "provider.log"), "a")

    def start(self):
        env = dict(os.environ, PORT=os.environ["IDP_PORT"])
        self.process = subprocess.Popen(["node", os.environ["PROVIDER"]], env=env, stdout=subprocess.PIPE,
                                        stderr=self.log, text=True)
        line = self.process.stdout.readline()
        if not line.startswith("listening on"):
            raise AssertionError(f"the OpenID provider did not start: {line!r}")
        return re.search(r"key ([\w-]+)", line).group(1)

    def stop(self):
        if self.process:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


def cookie(context, name):
    return next((c for c in context.cookies() if c["name"] == name), None)


def idp_login(page, login):
    """Fills the provider's own login form, then its consent form."""
    page.wait_for_url(f"{IDP}/interaction/**")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", "any password: the test provider checks none")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    if page.url.startswith(f"{IDP}/interaction/") and page.locator("button[type=submit]").count():
        page.click("button[type=submit]")  # consent: "Continue"


def sign_in(browser, login, gateway=GATEWAY):
    """A fresh browser (no IdP session yet) signs in as `login`; returns (context, page)."""
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{gateway}/console/auth/login")
    idp_login(page, login)
    page.wait_for_load_state()
    return context, page


def capture_callback(browser, login):
    """Signs in up to the IdP's redirect back, which is held: returns (context, page, the
    callback URL, the flow cookie). Playwright cannot intercept a redirect's target, so the
    login or consent form's POST is sent from here and its redirects followed without
    following the last one, to the gateway."""
    context = browser.new_context()
    page = context.new_page()
    captured = []

    def hold(route):
        if route.request.method != "POST":
            return route.continue_()
        response = route.fetch(max_redirects=0)
        while response.status in (302, 303):
            location = urllib.parse.urljoin(response.url, response.headers["location"])
            if location.startswith(f"{GATEWAY}/console/auth/callback"):
                captured.append(location)
                return route.fulfill(status=200, content_type="text/plain", body="held by the test")
            if not location.startswith(f"{IDP}/auth/"):
                return route.fulfill(status=303, headers={"location": location})
            response = context.request.get(location, max_redirects=0)
        return route.fulfill(response=response)

    page.route(f"{IDP}/interaction/**", hold)
    page.goto(f"{GATEWAY}/console/auth/login")
    idp_login(page, login)
    for _ in range(100):
        if captured:
            break
        page.wait_for_timeout(100)
    page.unroute(f"{IDP}/interaction/**")
    check(len(captured) == 1, f"the IdP sent {login} back to the callback once")
    flow = cookie(context, "vidgate_oidc")
    code = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(captured[0]).query))["code"]
    attempt = len(SECRETS)
    SECRETS[f"the code of attempt {attempt}"] = code
    SECRETS[f"the flow cookie of attempt {attempt}"] = flow["value"].split(".")[0]
    return context, page, captured[0], flow


def error_page(page, response, status, title, text, shot):
    """A failure shows a clear HTML page with a way to start again, never a stack trace."""
    body = page.inner_text("main")
    page.screenshot(path=os.path.join(OUT, f"{shot}.png"), full_page=True)
    check(response.status == status, f"{shot}: HTTP {status} (got {response.status})")
    check(response.headers["content-type"].startswith("text/html"), f"{shot}: an HTML page")
    check(page.inner_text("h1") == title, f"{shot}: titled {title!r} (got {page.inner_text('h1')!r})")
    check(text in body, f"{shot}: says {text!r} (page: {body!r})")
    check(page.locator("a[href='/console/auth/login']").count() == 1, f"{shot}: offers to sign in again")
    check(not re.search(r"panicked|backtrace|\.rs:\d+", page.content()), f"{shot}: no stack trace")
    check(cookie(page.context, "vidgate_session") is None, f"{shot}: no session cookie")


def api(path, cookie_value=None, base=GATEWAY):
    request = urllib.request.Request(base + path)
    if cookie_value:
        request.add_header("Cookie", f"vidgate_session={cookie_value}")
    try:
        with urllib.request.urlopen(request) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def main():
    provider = Provider()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_FLAGS)
        try:
            run(browser, provider)
        finally:
            browser.close()
            provider.stop()
    print(f"oidc browser test: {len(checks)} checks passed")


def run(browser, provider):
    # The IdP is down: the gateways started anyway; the sign-in page offers the IdP, and
    # starting a sign-in says the IdP cannot be reached.
    context = browser.new_context()
    page = context.new_page()
    response = page.goto(f"{GATEWAY}/console/")
    page.screenshot(path=os.path.join(OUT, "sign-in-page.png"), full_page=True)
    check(response.status == 401, "a visitor without a session gets the sign-in page (401)")
    button = page.locator("a.button", has_text="Sign in with your company account")
    check(button.count() == 1 and button.get_attribute("href") == "/console/auth/login",
          "the sign-in page offers 'Sign in with your company account'")
    with page.expect_navigation() as navigation:
        button.click()
    error_page(page, navigation.value, 503, "Sign-in service unreachable", "cannot be reached right now",
               "idp-down")
    check(IDP in page.inner_text("main"), "the unreachable page names the IdP's address")
    context.close()

    first_key = provider.start()

    # Finance signs in through the provider's login form (confidential client) and lands on
    # the spend overview; the authorization request is a code flow with PKCE S256.
    context = browser.new_context()
    page = context.new_page()
    requests = []
    page.on("request", lambda r: requests.append(r.url))
    page.goto(f"{GATEWAY}/console/")
    with page.expect_navigation():
        page.click("text=Sign in with your company account")
    page.screenshot(path=os.path.join(OUT, "idp-login-form.png"), full_page=True)
    idp_login(page, "fin")
    page.wait_for_url(f"{GATEWAY}/console/")
    authorize = next(u for u in requests if u.startswith(f"{IDP}/auth?"))
    params = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(authorize).query))
    check(params["response_type"] == "code" and params["client_id"] == "vidgate-console",
          "the gateway asks the IdP for a code, as client vidgate-console")
    check(params["redirect_uri"] == f"{GATEWAY}/console/auth/callback",
          "the redirect URI is {public_base_url}/console/auth/callback")
    check(params["code_challenge_method"] == "S256" and len(params["code_challenge"]) == 43,
          "PKCE with S256")
    check("openid" in params["scope"].split() and params.get("nonce") and params.get("state"),
          "scope openid, with a nonce and a state")
    page.screenshot(path=os.path.join(OUT, "finance-landing.png"), full_page=True)
    check(page.inner_text("header .who") == "fin", "finance's landing page names the user fin")
    check(page.locator("header nav a", has_text="Ledger").count() == 1, "finance sees the Ledger")
    check("alpha" in page.inner_text("main table"), "the spend overview lists tenant alpha")
    session = cookie(context, "vidgate_session")
    check(session is not None and session["httpOnly"], "the session cookie is set, HttpOnly")
    check(cookie(context, "vidgate_oidc") is None, "the flow cookie is cleared after the callback")
    check(api("/v1/admin/usage", session["value"]) == 200, "the session reads the admin usage API")

    # Sign-out ends the session: the console shows the sign-in page, the cookie is dead.
    with page.expect_navigation():
        page.click("header .logout button")
    page.wait_for_url(f"{GATEWAY}/console/")
    check(page.locator("a.button", has_text="Sign in with your company account").count() == 1,
          "after sign-out the console shows the sign-in page")
    check(api("/v1/admin/usage", session["value"]) == 401, "after sign-out the old cookie is refused")
    context.close()

    # A team member lands on the team page.
    context, page = sign_in(browser, "ann")
    page.wait_for_url(f"{GATEWAY}/console/team")
    page.screenshot(path=os.path.join(OUT, "team-landing.png"), full_page=True)
    check("alpha" in page.inner_text("header .who"), "ann lands on her team's page (tenant alpha)")
    context.close()

    # Neither tenant nor role: a page says so, and no session opens.
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{GATEWAY}/console/auth/login")
    with page.expect_navigation(url=CALLBACK) as navigation:
        idp_login(page, "nobody")
    error_page(page, navigation.value, 403, "No access to the console", "neither a team", "no-tenant-no-role")
    check("nobody" in page.inner_text("main"), "the page names the account")
    context.close()

    # A tampered state is refused; the untouched answer then signs in once; the same code a
    # second time (with the flow cookie put back) is refused by the IdP as used.
    context, page, callback, flow = capture_callback(browser, "ann")
    check(flow is not None and flow["httpOnly"] and flow["path"] == "/console/auth",
          "the flow cookie is HttpOnly, on /console/auth only")
    state = dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(callback).query))["state"]
    tampered = callback.replace(f"state={state}", f"state={state[:-2]}xy")
    error_page(page, page.goto(tampered), 400, "Sign-in not accepted", "state does not match", "tampered-state")
    context.add_cookies([flow])
    page.goto(callback)
    page.wait_for_url(f"{GATEWAY}/console/team")
    check(cookie(context, "vidgate_session") is not None, "the untouched answer signs in")
    context.close()
    context = browser.new_context()
    context.add_cookies([flow])
    page = context.new_page()
    error_page(page, page.goto(callback), 401, "Sign-in code expired", "expired or was already used", "used-code")
    context.close()

    # An expired code: the answer is held past the code's lifetime.
    context, page, callback, _ = capture_callback(browser, "ann")
    time.sleep(CODE_TTL_SECS + 1)
    error_page(page, page.goto(callback), 401, "Sign-in code expired", "expired or was already used",
               "expired-code")
    context.close()

    # An ID token for another audience (signed by the IdP's real key) is refused.
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{GATEWAY}/console/auth/login")
    with page.expect_navigation(url=CALLBACK) as navigation:
        idp_login(page, "outsider")
    error_page(page, navigation.value, 401, "Sign-in not accepted", "audience", "wrong-audience")
    check("another-app" in page.inner_text("main"), "the page names the audience found")
    context.close()

    # The public client (PKCE, no secret): an admin signs in on the second gateway.
    context, page = sign_in(browser, "adm", gateway=PUBLIC_GATEWAY)
    page.wait_for_url(f"{PUBLIC_GATEWAY}/console/")
    page.screenshot(path=os.path.join(OUT, "public-client-admin.png"), full_page=True)
    check(page.inner_text("header .who") == "adm", "an admin signs in through the public client")
    context.close()

    # The IdP rotates its keys (a restart with a new key id): the gateway, which cached the
    # old key set, fetches it again on the key id miss, and finance signs in.
    provider.stop()
    second_key = provider.start()
    check(second_key != first_key, "the restarted provider signs with a new key id")
    time.sleep(1.1)  # auth.jwks_refresh_cooldown_secs = 1 in this test's config
    context, page = sign_in(browser, "fin")
    page.wait_for_url(f"{GATEWAY}/console/")
    check(page.inner_text("header .who") == "fin", "after the IdP's key rotation finance signs in")
    with open(GATEWAY_LOG) as log:
        refreshed = [line for line in log if "IdP keys refreshed" in line]
    check(len(refreshed) == 1 and second_key in refreshed[0],
          "the gateway refreshed the IdP's keys once, on the key id miss")
    context.close()

    # The public client's gateway fetched the keys less than its cooldown (an hour) ago: it
    # does not fetch them again, and the new key is refused until the cooldown passes.
    context = browser.new_context()
    page = context.new_page()
    page.goto(f"{PUBLIC_GATEWAY}/console/auth/login")
    with page.expect_navigation(url=CALLBACK) as navigation:
        idp_login(page, "adm")
    error_page(page, navigation.value, 401, "Sign-in not accepted", "No matching key found", "key-within-cooldown")
    context.close()

    # The gateway logged at debug level throughout: no secret, code or verifier in it.
    with open(GATEWAY_LOG) as log:
        text = log.read()
    check(" DEBUG " in text or '"DEBUG"' in text, "the gateway's log is at debug level")
    for what, value in SECRETS.items():
        check(value not in text, f"{what} is not in the gateway's debug log")


if __name__ == "__main__":
    try:
        main()
    except AssertionError as error:
        print(f"oidc browser test FAILED: {error}\n(passed before it: {len(checks)})", file=sys.stderr)
        sys.exit(1)
