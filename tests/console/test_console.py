#!/usr/bin/env python3
"""The web console (README "Web console") in headless Chromium, driven by selenium,
against a real `keygate serve --db` started here on 127.0.0.1 (and stopped at the end).

Every flow: sign-in (a wrong key, then a good one; the key in sessionStorage only), create
(scopes from the catalog, expiries from the policy, read-only) with the key shown once
(Copy, Download JSON, gone when the dialog closes), inline errors from the API, the list
(filters, paging, every column, expired keys marked), disable / enable / rotate / revoke
with confirmations, revoke all of an owner (typed), the audit trail, hostile owners and
labels shown as text, a revoked admin key sending the user back to sign-in, the
keyboard alone, phone width, and no Content-Security-Policy violation.

    make console-test                # this test
    make screenshots                 # the same run, saving docs/console-*.png

End to end through a real Envoy 1.40 running keygate (key_set, watching this key service):
a key made in the page is allowed at the gateway within about a second, and refused once
revoked in the page.

Environment: KEYGATE_BIN (default target/debug/keygate), KEYGATE_WASM
(target/wasm32-wasip1/release/keygate.wasm), KEYGATE_ENVOY (.venv/bin/envoy), CHROMIUM
(/usr/bin/chromium), CHROMEDRIVER (/usr/bin/chromedriver).
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.error
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
KEYGATE = os.environ.get("KEYGATE_BIN") or os.path.join(REPO, "target", "debug", "keygate")
WASM = os.environ.get("KEYGATE_WASM") or os.path.join(
    REPO, "target", "wasm32-wasip1", "release", "keygate.wasm")
ENVOY = os.environ.get("KEYGATE_ENVOY") or os.path.join(REPO, ".venv", "bin", "envoy")
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
DESKTOP = (1280, 860)
PHONE = (390, 844)


def keygate(*args):
    out = subprocess.run([KEYGATE, *args], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise AssertionError(f"keygate {' '.join(args)}: {out.stderr}")
    return out.stdout


class KeyService:
    """`keygate serve --db DB --listen 127.0.0.1:0`, stopped with SIGTERM."""

    def __init__(self, db):
        self.proc = subprocess.Popen(
            [KEYGATE, "serve", "--db", db, "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log = []
        deadline = time.time() + 20
        self.base = None
        while time.time() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                break
            self.log.append(line)
            prefix = "keygate serve: listening on http://"
            if line.startswith(prefix):
                self.base = "http://" + line[len(prefix):].split()[0]
                break
        if not self.base:
            self.stop()
            raise AssertionError("keygate serve did not start: " + "".join(self.log))
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.proc.stderr:
            self.log.append(line)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class Api:
    def __init__(self, base, admin):
        self.base = base
        self.admin = admin

    def call(self, method, path, body=None, auth=True):
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        if auth:
            req.add_header("Authorization", "Bearer " + self.admin)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                text = r.read().decode()
                return r.status, (json.loads(text) if text else None)
        except urllib.error.HTTPError as e:
            text = e.read().decode()
            return e.code, (json.loads(text) if text else None)

    def create(self, owner, scopes=("browse",), **extra):
        status, body = self.call("POST", "/v1/admin/keys", {"owner": owner, "scopes": list(scopes), **extra})
        assert status == 201, (status, body)
        return body

    def key(self, key_id):
        status, body = self.call("GET", "/v1/admin/keys/" + key_id)
        assert status == 200, (status, body)
        return body


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Gateway:
    """Envoy with keygate in key_set mode, watching the key service at `base`, in front of
    a direct 200: what a client of the gateway gets for a key."""

    def __init__(self, base, tmp):
        host, port = base.removeprefix("http://").rsplit(":", 1)
        self.port = free_port()
        config = {
            "key_set": {"cluster": "keyservice", "path": "/v1/keyset",
                        "watch_seconds": 25, "refresh_seconds": 30},
            "rules": [{"path_prefix": "/", "scopes": ["browse"]}],
        }
        wasm = {"name": "envoy.filters.http.wasm", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {"name": "keygate", "root_id": "keygate",
                       "vm_config": {"vm_id": "keygate", "runtime": "envoy.wasm.runtime.v8",
                                     "code": {"local": {"filename": WASM}}},
                       "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue",
                                         "value": json.dumps(config)}}}}
        router = {"name": "envoy.filters.http.router", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
        hcm = {"name": "envoy.filters.network.http_connection_manager", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
            "stat_prefix": "gateway",
            "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                {"match": {"prefix": "/"},
                 "direct_response": {"status": 200, "body": {"inline_string": "upstream"}}}]}]},
            "http_filters": [wasm, router]}}
        bootstrap = {
            "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
            "static_resources": {
                "listeners": [{"name": "gateway", "address": {"socket_address": {
                    "address": "127.0.0.1", "port_value": self.port}},
                    "filter_chains": [{"filters": [hcm]}]}],
                "clusters": [{"name": "keyservice", "type": "STATIC", "connect_timeout": "1s",
                              "load_assignment": {"cluster_name": "keyservice", "endpoints": [
                                  {"lb_endpoints": [{"endpoint": {"address": {"socket_address": {
                                      "address": host, "port_value": int(port)}}}}]}]}}],
            },
        }
        path = os.path.join(tmp, "envoy.json")
        with open(path, "w") as f:
            json.dump(bootstrap, f)
        self.log = open(os.path.join(tmp, "envoy.log"), "w+")
        self.proc = subprocess.Popen(
            [ENVOY, "-c", path, "--concurrency", "2", "--disable-hot-restart",
             "--base-id", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self.log, stderr=subprocess.STDOUT)

    def status(self, key):
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}/data",
                                         headers={"Authorization": f"Bearer {key}"})
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status
        except urllib.error.HTTPError as e:
            return e.code
        except OSError:
            return None

    def until(self, key, status, within):
        """Seconds until 10 requests in a row (new connections, both workers) answer
        `status`; fails after `within`."""
        started = time.time()
        while time.time() - started < within:
            if all(self.status(key) == status for _ in range(10)):
                return time.time() - started
            time.sleep(0.02)
        self.log.seek(0)
        raise AssertionError(f"the gateway never answered {status} within {within} s:\n"
                             + self.log.read()[-3000:])

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


class Console:
    """The browser, with helpers named after what a user does."""

    def __init__(self, base, downloads):
        options = Options()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions", "--hide-scrollbars",
                    f"--window-size={DESKTOP[0]},{DESKTOP[1]}", "--force-device-scale-factor=1"):
            options.add_argument(arg)
        options.add_experimental_option("prefs", {
            "download.default_directory": downloads,
            "download.prompt_for_download": False,
        })
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_window_size(*DESKTOP)
        self.base = base
        self.downloads = downloads
        self.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": downloads})
        try:
            self.driver.execute_cdp_cmd("Browser.grantPermissions", {
                "origin": base,
                "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"],
            })
        except Exception:  # an older Chromium: the copy falls back to the selection
            pass
        self.wait = WebDriverWait(self.driver, 10)
        self.shots = None

    def quit(self):
        self.driver.quit()

    def open(self):
        self.driver.get(self.base + "/console")
        self.wait.until(lambda d: d.execute_script("return document.readyState") == "complete")

    def by_id(self, id_):
        return self.driver.find_element(By.ID, id_)

    def visible(self, id_):
        return self.by_id(id_).is_displayed()

    def until_visible(self, id_):
        self.wait.until(lambda d: d.find_element(By.ID, id_).is_displayed())
        return self.by_id(id_)

    def until_hidden(self, id_):
        self.wait.until(lambda d: not d.find_element(By.ID, id_).is_displayed())

    def until_text(self, id_, contains):
        try:
            self.wait.until(lambda d: contains in d.find_element(By.ID, id_).text)
        except Exception:
            raise AssertionError(f"#{id_} never said {contains!r}: {self.by_id(id_).text!r}")
        return self.by_id(id_).text

    def js(self, script, *args):
        return self.driver.execute_script(script, *args)

    def session_key(self):
        return self.js("return sessionStorage.getItem('keygate.adminKey')")

    def sign_in(self, key):
        field = self.until_visible("admin-key")
        field.clear()
        field.send_keys(key)
        self.by_id("signin-submit").click()

    def rows(self):
        return self.driver.find_elements(By.CSS_SELECTOR, "#keys-body tr")

    def row(self, key_id):
        return self.driver.find_element(By.CSS_SELECTOR, f'#keys-body tr[data-id="{key_id}"]')

    def cells(self, key_id):
        return {td.get_attribute("data-label"): td for td in self.row(key_id).find_elements(By.TAG_NAME, "td")}

    def filter(self, owner="", status=""):
        field = self.by_id("filter-owner")
        field.clear()
        if owner:
            field.send_keys(owner)
        Select(self.by_id("filter-status")).select_by_value(status)
        self.by_id("filter-apply").click()
        self.wait_loaded()

    def wait_loaded(self):
        # The list is replaced in one go; wait for the page label to settle.
        time.sleep(0.15)
        self.wait.until(lambda d: d.find_element(By.ID, "page-info").text.startswith("Page"))

    def action(self, key_id, action):
        self.row(key_id).find_element(By.CSS_SELECTOR, f'button[data-action="{action}"]').click()
        return self.until_visible("confirm-dialog")

    def confirm(self):
        self.by_id("confirm-ok").click()
        self.until_hidden("confirm-dialog")
        self.wait_loaded()

    def shot(self, name):
        if self.shots:
            self.js("window.scrollTo(0, 0)")
            time.sleep(0.2)
            path = os.path.join(self.shots, f"console-{name}.png")
            self.driver.save_screenshot(path)
            print(f"  screenshot {os.path.relpath(path, REPO)}")

    def csp_violations(self):
        return [e["message"] for e in self.driver.get_log("browser")
                if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


# ---- the flows ----

def sign_in_refuses_a_wrong_key_and_keeps_the_good_one_in_the_tab(c, ctx):
    c.open()
    assert c.visible("view-signin") and not c.visible("view-keys")
    assert c.by_id("admin-key").get_attribute("type") == "password"
    assert c.by_id("admin-key").get_dom_attribute("name") is None
    c.shot("signin")
    c.sign_in("")
    c.until_text("admin-key-error", "Paste an admin key")
    c.sign_in("kga_not_a_key_of_this_service")
    c.until_text("admin-key-error", "not accepted")
    assert c.by_id("admin-key").get_attribute("aria-invalid") == "true"
    assert c.session_key() is None
    c.shot("signin-refused")
    c.sign_in(ctx["admin"])
    c.until_visible("view-keys")
    assert c.session_key() == ctx["admin"]
    assert ctx["admin"] not in c.driver.current_url
    assert c.driver.current_url == c.base + "/console"
    assert c.driver.get_cookies() == []
    assert c.js("return localStorage.length") == 0
    # A reload keeps the tab signed in.
    c.open()
    c.until_visible("view-keys")


def create_shows_the_key_once_with_copy_and_download(c, ctx):
    api = ctx["api"]
    c.by_id("new-key").click()
    c.until_visible("create-dialog")
    assert c.js("return document.activeElement.id") == "create-owner"
    scopes = [i.get_attribute("value") for i in c.driver.find_elements(By.CSS_SELECTOR, "#create-scope-list input")]
    assert scopes == ["browse", "download", "upload"], scopes
    for box in c.driver.find_elements(By.CSS_SELECTOR, "#create-scope-list input"):
        assert c.driver.find_elements(By.CSS_SELECTOR, f'label[for="{box.get_attribute("id")}"]')
    expiry = Select(c.by_id("create-expiry"))
    assert [o.get_attribute("value") for o in expiry.options] == ["7d", "30d", "90d", "365d"]
    assert expiry.first_selected_option.get_attribute("value") == "30d"
    c.by_id("create-owner").send_keys("alice")
    c.by_id("create-label").send_keys("ci-runner")
    c.driver.find_element(By.CSS_SELECTOR, '#create-scope-list input[value="browse"]').click()
    c.driver.find_element(By.CSS_SELECTOR, '#create-scope-list input[value="download"]').click()
    expiry.select_by_value("90d")
    c.by_id("create-read-only").click()
    c.shot("create")
    c.by_id("create-submit").click()
    c.until_visible("secret-dialog")
    api_key = c.by_id("secret-key").get_attribute("value")
    key_id = c.by_id("secret-id").text
    assert api_key.startswith("kg_"), api_key
    record = api.key(key_id)
    assert record["owner"] == "alice" and record["label"] == "ci-runner"
    assert record["scopes"] == ["browse", "download"] and record["read_only"] is True
    assert c.by_id("secret-expires").text == record["expires_at"]
    # The key is what the gateways will find.
    digest = hashlib.sha256(api_key.encode()).hexdigest()
    assert record["hash"] == digest
    # Copy.
    c.by_id("secret-copy").click()
    status = c.until_text("secret-status", "")
    c.wait.until(lambda d: d.find_element(By.ID, "secret-status").text != "")
    status = c.by_id("secret-status").text
    assert "Copied" in status or "Ctrl+C" in status, status
    if "Copied" in status:
        pasted = c.driver.execute_async_script(
            "const done = arguments[0]; navigator.clipboard.readText().then(done, () => done(null));")
        assert pasted in (api_key, None), "the clipboard holds something else"
    # Download JSON: ImmPort's file.
    c.by_id("secret-download").click()
    path = os.path.join(c.downloads, f"keygate-key-{key_id}.json")
    deadline = time.time() + 10
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.1)
    assert os.path.exists(path), os.listdir(c.downloads)
    with open(path) as f:
        doc = json.load(f)
    assert doc == {"id": key_id, "api_key": api_key, "expires_at": record["expires_at"]}, doc
    c.shot("key-shown-once")
    # Closed: the key leaves the page.
    c.by_id("secret-close").click()
    c.until_hidden("secret-dialog")
    assert c.by_id("secret-key").get_attribute("value") == ""
    assert api_key not in c.driver.page_source
    assert api_key not in c.js("return document.body.innerText")
    c.until_text("keys-flash", "created for alice")
    c.wait.until(lambda d: c.driver.find_elements(By.CSS_SELECTOR, f'#keys-body tr[data-id="{key_id}"]'))
    ctx["alice"] = key_id


def api_errors_are_shown_next_to_the_field(c, ctx):
    db = ctx["db"]
    c.by_id("new-key").click()
    c.until_visible("create-dialog")
    # Nothing typed: the owner is asked for, next to its field.
    c.by_id("create-submit").click()
    c.until_text("create-owner-error", "owner")
    assert c.by_id("create-owner").get_attribute("aria-invalid") == "true"
    c.by_id("create-owner").send_keys("erin")
    c.driver.find_element(By.CSS_SELECTOR, '#create-scope-list input[value="upload"]').click()
    Select(c.by_id("create-expiry")).select_by_value("365d")
    # The policy changes while the form is open: upload leaves the catalog, the maximum
    # becomes 30 days. The API refuses, and says so next to each field.
    keygate("policy", "--db", db, "--scopes", "browse,download", "--default-expiry", "30d", "--max-expiry", "30d")
    try:
        c.by_id("create-submit").click()
        text = c.until_text("create-scopes-error", "not in the scope catalog")
        assert "upload" in text, text
        assert not c.visible("create-owner-error")
        c.shot("inline-error")
        c.driver.find_element(By.CSS_SELECTOR, '#create-scope-list input[value="upload"]').click()
        c.driver.find_element(By.CSS_SELECTOR, '#create-scope-list input[value="browse"]').click()
        c.by_id("create-submit").click()
        c.until_text("create-expires_in-error", "beyond the policy's maximum expiry")
        assert not c.visible("create-scopes-error")
        assert c.by_id("create-expiry").get_attribute("aria-invalid") == "true"
        assert c.visible("create-dialog")
        # Nothing was made.
        status, page = ctx["api"].call("GET", "/v1/admin/keys?owner=erin")
        assert page["keys"] == [], page
    finally:
        keygate("policy", "--db", db, "--scopes", "browse,download,upload", "--default-expiry", "30d",
                "--max-expiry", "365d")
    c.by_id("create-cancel").click()
    c.until_hidden("create-dialog")


def the_keyboard_alone_creates_a_key(c, ctx):
    c.by_id("new-key").send_keys(Keys.ENTER)
    c.until_visible("create-dialog")
    keys = ActionChains(c.driver)
    assert c.js("return document.activeElement.id") == "create-owner"
    keys.send_keys("kbd-user").send_keys(Keys.TAB).send_keys("typed only").send_keys(Keys.TAB)
    keys.send_keys(Keys.SPACE)  # the first scope
    keys.perform()
    assert c.js("return document.activeElement.value") == "browse"
    ActionChains(c.driver).key_down(Keys.SHIFT).send_keys(Keys.TAB).key_up(Keys.SHIFT).send_keys(Keys.ENTER).perform()
    c.until_visible("secret-dialog")
    assert c.js("return document.activeElement.id") == "secret-key"
    key_id = c.by_id("secret-id").text
    ActionChains(c.driver).send_keys(Keys.ESCAPE).perform()
    c.until_hidden("secret-dialog")
    assert c.by_id("secret-key").get_attribute("value") == ""
    # The focus lands on what happened, not lost on the page.
    assert c.js("return document.activeElement.id") == "keys-flash"
    assert "created for kbd-user" in c.by_id("keys-flash").text
    record = ctx["api"].key(key_id)
    assert (record["owner"], record["label"], record["scopes"]) == ("kbd-user", "typed only", ["browse"])


def without_a_catalog_scopes_are_typed(c, ctx):
    db = ctx["db"]
    keygate("policy", "--db", db, "--any-scope", "--max-expiry", "never")
    try:
        c.by_id("new-key").click()
        c.until_visible("create-dialog")
        assert not c.visible("create-scope-list") and c.visible("create-scopes-text")
        expiry = Select(c.by_id("create-expiry"))
        assert [o.get_attribute("value") for o in expiry.options] == ["never", "7d", "30d", "90d", "365d"]
        c.by_id("create-owner").send_keys("frank")
        c.by_id("create-scopes-text").send_keys("read:reports, write:reports")
        expiry.select_by_value("never")
        c.by_id("create-submit").click()
        c.until_visible("secret-dialog")
        assert c.by_id("secret-expires").text == "never"
        key_id = c.by_id("secret-id").text
        c.by_id("secret-close").click()
        c.until_hidden("secret-dialog")
        record = ctx["api"].key(key_id)
        assert record["scopes"] == ["read:reports", "write:reports"] and record["expires_at"] is None, record
    finally:
        keygate("policy", "--db", db, "--scopes", "browse,download,upload", "--default-expiry", "30d",
                "--max-expiry", "365d")


def the_list_pages_filters_and_shows_every_column(c, ctx):
    api = ctx["api"]
    made = [api.create("bulk", label=f"bulk-{i:02}")["id"] for i in range(45)]
    c.filter(owner="bulk")
    headers = [th.text for th in c.driver.find_elements(By.CSS_SELECTOR, "#keys-table thead th")]
    assert headers == ["ID", "Owner", "Label", "Scopes", "Created", "Expires", "Last used", "Uses",
                       "Status", "Read-only", "Actions"], headers
    seen = []
    pages = 0
    while True:
        pages += 1
        ids = [r.get_attribute("data-id") for r in c.rows()]
        assert len(ids) == (20 if pages < 3 else 5), (pages, len(ids))
        seen += ids
        if not c.by_id("next-page").is_enabled():
            break
        c.by_id("next-page").click()
        c.wait.until(lambda d: c.by_id("page-info").text.startswith(f"Page {pages + 1}"))
    assert seen == made and pages == 3
    c.by_id("prev-page").click()
    c.wait.until(lambda d: c.by_id("page-info").text.startswith("Page 2"))
    assert [r.get_attribute("data-id") for r in c.rows()] == made[20:40]
    # Uses and last used, from a gateway's usage report; an expired key is marked.
    first, second = made[0], made[1]
    status, _ = api.call("POST", "/v1/usage", {"reports": [
        {"hash": api.key(first)["hash"], "count": 3, "last_used_at": "2026-01-02T03:04:05Z"}]}, auth=False)
    assert status == 204, status
    status, _ = api.call("PATCH", "/v1/admin/keys/" + second, {"expires_at": "2026-01-01T00:00:00Z"})
    assert status == 200
    c.filter(owner="bulk")
    cells = c.cells(first)
    assert cells["Uses"].text == "3" and cells["Last used"].text == "2026-01-02\n03:04 UTC", cells["Last used"].text
    assert cells["Owner"].text == "bulk" and cells["Label"].text == "bulk-00"
    assert cells["Scopes"].text == "browse" and cells["Status"].text == "enabled"
    assert cells["Read-only"].text == "no" and cells["ID"].text == first
    assert cells["Created"].text.endswith("UTC") and cells["Expires"].text.endswith("UTC")
    assert "expired" not in cells["Expires"].text
    expired = c.cells(second)["Expires"]
    assert expired.text == "2026-01-01\n00:00 UTC\nexpired", expired.text
    assert expired.find_elements(By.CSS_SELECTOR, ".badge.expired")
    assert c.cells(c.rows()[2].get_attribute("data-id"))["Last used"].text == "never"
    c.shot("keys")
    # Status filter.
    api.call("PATCH", "/v1/admin/keys/" + made[5], {"status": "disabled"})
    c.filter(owner="bulk", status="disabled")
    assert [r.get_attribute("data-id") for r in c.rows()] == [made[5]]
    c.filter(owner="nobody-at-all")
    assert c.rows() == [] and c.visible("keys-empty")
    c.by_id("filter-clear").click()
    c.wait_loaded()
    assert len(c.rows()) == 20


def each_action_asks_first(c, ctx):
    api = ctx["api"]
    key_id = api.create("carol", label="deploy")["id"]
    c.filter(owner="carol")
    # Cancelled: nothing changes.
    c.action(key_id, "disable")
    assert "deploy" in c.by_id("confirm-text").text
    c.shot("confirm")
    c.by_id("confirm-cancel").click()
    c.until_hidden("confirm-dialog")
    assert api.key(key_id)["status"] == "enabled"
    c.action(key_id, "disable")
    ActionChains(c.driver).send_keys(Keys.ESCAPE).perform()
    c.until_hidden("confirm-dialog")
    assert api.key(key_id)["status"] == "enabled"
    # Disable, enable.
    c.action(key_id, "disable")
    c.confirm()
    c.until_text("keys-flash", "disabled")
    assert api.key(key_id)["status"] == "disabled"
    assert c.cells(key_id)["Status"].text == "disabled"
    c.action(key_id, "enable")
    c.confirm()
    c.until_text("keys-flash", "enabled")
    assert api.key(key_id)["status"] == "enabled"
    # Rotate: the new key shown once, the old one kept for the grace chosen.
    c.action(key_id, "rotate")
    assert c.visible("confirm-grace")
    Select(c.by_id("confirm-grace-select")).select_by_value("1h")
    c.by_id("confirm-ok").click()
    c.until_visible("secret-dialog")
    assert c.by_id("secret-replaces").text == key_id
    new_key = c.by_id("secret-key").get_attribute("value")
    new_id = c.by_id("secret-id").text
    assert new_key.startswith("kg_")
    c.shot("rotated")
    c.by_id("secret-close").click()
    c.until_hidden("secret-dialog")
    assert new_key not in c.driver.page_source
    rotated = api.key(new_id)
    assert (rotated["owner"], rotated["label"]) == ("carol", "deploy")
    old = api.key(key_id)
    assert old["expires_at"] is not None
    # Revoke.
    c.wait_loaded()
    c.action(new_id, "revoke")
    assert "cannot be undone" in c.by_id("confirm-text").text
    c.confirm()
    c.until_text("keys-flash", "revoked")
    assert api.key(new_id)["status"] == "revoked"
    assert c.cells(new_id)["Status"].text == "revoked"
    assert not c.row(new_id).find_elements(By.CSS_SELECTOR, "button")


def revoke_all_of_an_owner_needs_the_name_typed(c, ctx):
    api = ctx["api"]
    ids = [api.create("dave")["id"] for _ in range(3)]
    c.filter(owner="dave")
    c.by_id("revoke-owner-open").click()
    c.until_visible("confirm-dialog")
    assert c.by_id("confirm-owner-input").get_attribute("value") == "dave"
    assert c.js("return document.activeElement.id") == "confirm-typed-input"
    c.by_id("confirm-typed-input").send_keys("dav")
    c.by_id("confirm-ok").click()
    c.until_text("confirm-error", "not the owner's")
    assert c.visible("confirm-dialog")
    assert all(api.key(i)["status"] == "enabled" for i in ids)
    c.by_id("confirm-typed-input").send_keys("e")
    c.shot("revoke-owner")
    c.by_id("confirm-ok").click()
    c.until_hidden("confirm-dialog")
    c.until_text("keys-flash", "Revoked 3 keys of dave")
    assert all(api.key(i)["status"] == "revoked" for i in ids)


def hostile_owners_and_labels_are_text(c, ctx):
    api = ctx["api"]
    owner = '<script>window.__pwned=1</script>"\'&amp;' + "W" * 300
    label = '<img src=x onerror="window.__pwned=2"><b>bold</b> "quoted" \'single\''
    key_id = api.create(owner, label=label)["id"]
    c.filter(owner=owner)
    cells = c.cells(key_id)
    assert cells["Owner"].text.replace("\n", "") == owner
    assert cells["Label"].text == label
    assert not c.driver.find_elements(By.CSS_SELECTOR, "#keys-body script, #keys-body img, #keys-body b")
    assert c.js("return window.__pwned === undefined")
    # The long owner wraps inside the page.
    assert c.js("return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
    c.action(key_id, "disable")
    assert owner in c.by_id("confirm-text").text.replace("\n", "")
    c.by_id("confirm-cancel").click()
    c.until_hidden("confirm-dialog")
    # In the audit trail too (the detail of a create is the owner).
    c.by_id("nav-audit").click()
    c.until_visible("view-audit")
    c.wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#audit-body tr"))
    detail = c.driver.find_elements(By.CSS_SELECTOR, "#audit-body tr")[0].find_elements(By.TAG_NAME, "td")[5]
    assert detail.text.replace("\n", "") == owner
    assert not c.driver.find_elements(By.CSS_SELECTOR, "#audit-body script")
    assert c.js("return window.__pwned === undefined")
    c.by_id("nav-keys").click()
    c.until_visible("view-keys")


def the_audit_trail_lists_every_change(c, ctx):
    c.by_id("nav-audit").click()
    c.until_visible("view-audit")
    c.wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#audit-body tr")) > 0)
    # Newest first, 50 at a time, then older ones on request.
    status, latest = ctx["api"].call("GET", "/v1/admin/audit?order=newest&limit=1")
    newest = latest["entries"][0]["seq"]
    assert newest > 60, newest

    def seqs():
        return c.js("return Array.from(document.querySelectorAll('#audit-body tr'), r => Number(r.dataset.seq))")
    assert seqs() == list(range(newest, newest - 50, -1)), seqs()
    c.by_id("audit-more").click()
    c.wait.until(lambda d: len(seqs()) > 50)
    assert seqs() == list(range(newest, 0, -1)) or seqs() == list(range(newest, newest - 100, -1)), seqs()
    rows = c.driver.find_elements(By.CSS_SELECTOR, "#audit-body tr")
    actions = {r.find_elements(By.TAG_NAME, "td")[3].text for r in rows}
    for action in ("create", "update", "rotate", "revoke"):
        assert any(a.startswith(action) for a in actions), (action, actions)
    actors = {r.find_elements(By.TAG_NAME, "td")[2].text for r in rows}
    assert f"admin:{ctx['admin_id']}" in actors, actors
    assert c.by_id("nav-audit").get_attribute("aria-current") == "page"
    assert c.js("return window.__pwned === undefined")
    c.by_id("audit-refresh").click()
    c.wait.until(lambda d: len(seqs()) == 50)
    c.shot("audit")
    c.by_id("nav-keys").click()
    c.until_visible("view-keys")


def every_control_is_labelled(c, ctx):
    c.by_id("new-key").click()
    c.until_visible("create-dialog")
    unlabelled = c.js("""
        const out = [];
        for (const e of document.querySelectorAll('input, select, textarea')) {
          if (!e.labels || e.labels.length === 0) out.push(e.id || e.outerHTML);
        }
        for (const b of document.querySelectorAll('button')) {
          if (!b.textContent.trim() && !b.getAttribute('aria-label')) out.push(b.id || b.outerHTML);
        }
        return out;""")
    assert unlabelled == [], unlabelled
    c.by_id("create-cancel").click()
    c.until_hidden("create-dialog")


def phone_width_shows_cards(c, ctx):
    c.driver.set_window_size(*PHONE)
    try:
        c.filter(owner="alice")
        assert c.js("return document.documentElement.scrollWidth <= document.documentElement.clientWidth + 1")
        td = c.rows()[0].find_elements(By.TAG_NAME, "td")[0]
        assert c.js("return getComputedStyle(arguments[0]).display", td) == "grid"
        c.shot("phone")
        c.by_id("new-key").click()
        c.until_visible("create-dialog")
        dialog = c.by_id("create-dialog")
        assert dialog.size["width"] <= PHONE[0]
        c.shot("phone-create")
        c.by_id("create-cancel").click()
        c.until_hidden("create-dialog")
    finally:
        c.driver.set_window_size(*DESKTOP)


def a_revoked_admin_key_goes_back_to_sign_in(c, ctx):
    second = json.loads(keygate("admin", "new", "--db", ctx["db"]))
    c.by_id("sign-out").click()
    c.until_visible("view-signin")
    assert c.session_key() is None
    c.sign_in(second["admin_key"])
    c.until_visible("view-keys")
    # The admin key is revoked while the tab is signed in with it.
    keygate("admin", "revoke", "--db", ctx["db"], second["id"])
    c.by_id("filter-apply").click()
    c.until_visible("view-signin")
    text = c.until_text("signin-message", "refused")
    assert "revoked" in text and "expired" in text, text
    assert c.session_key() is None
    c.shot("signed-out")
    c.sign_in(ctx["admin"])
    c.until_visible("view-keys")


def no_content_security_policy_violation(c, ctx):
    violations = c.csp_violations()
    assert violations == [], violations
    # And the policy is enforced: an inline script put in the page does not run, and the
    # refusal is seen in the log read above.
    c.js("const s = document.createElement('script'); s.textContent = 'window.__inline = 1'; "
         "document.body.append(s);")
    time.sleep(0.3)
    assert c.js("return window.__inline === undefined")
    assert any("Content Security Policy" in m for m in c.csp_violations())


def a_key_made_in_the_page_opens_the_gateway_and_revoking_it_closes_it(c, ctx):
    gateway = ctx["gateway"]
    # The gateway has loaded the store's set: a key it holds answers, an unknown one not.
    assert gateway.until("kg_not_a_key", 401, 30) >= 0
    c.filter()
    c.by_id("new-key").click()
    c.until_visible("create-dialog")
    c.by_id("create-owner").send_keys("gina")
    c.driver.find_element(By.CSS_SELECTOR, '#create-scope-list input[value="browse"]').click()
    c.by_id("create-submit").click()
    c.until_visible("secret-dialog")
    api_key = c.by_id("secret-key").get_attribute("value")
    key_id = c.by_id("secret-id").text
    c.by_id("secret-close").click()
    c.until_hidden("secret-dialog")
    allowed = gateway.until(api_key, 200, 5)
    print(f"     a key made in the page is allowed at the gateway after {allowed:.2f} s")
    c.filter(owner="gina")
    c.action(key_id, "revoke")
    c.confirm()
    c.until_text("keys-flash", "revoked")
    refused = gateway.until(api_key, 401, 5)
    print(f"     revoked in the page, it is refused at the gateway after {refused:.2f} s")


FLOWS = [
    sign_in_refuses_a_wrong_key_and_keeps_the_good_one_in_the_tab,
    create_shows_the_key_once_with_copy_and_download,
    api_errors_are_shown_next_to_the_field,
    the_keyboard_alone_creates_a_key,
    without_a_catalog_scopes_are_typed,
    the_list_pages_filters_and_shows_every_column,
    each_action_asks_first,
    revoke_all_of_an_owner_needs_the_name_typed,
    the_audit_trail_lists_every_change,
    hostile_owners_and_labels_are_text,
    every_control_is_labelled,
    phone_width_shows_cards,
    a_key_made_in_the_page_opens_the_gateway_and_revoking_it_closes_it,
    a_revoked_admin_key_goes_back_to_sign_in,
    no_content_security_policy_violation,
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--screenshots", metavar="DIR", help="save docs/console-*.png here")
    parser.add_argument("-k", metavar="TEXT", help="run only the flows whose name has TEXT (and sign-in)")
    args = parser.parse_args()
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="keygate-console-") as tmp:
        db = os.path.join(tmp, "keys.db")
        admin = json.loads(keygate("admin", "new", "--db", db))
        keygate("policy", "--db", db, "--scopes", "browse,download,upload", "--default-expiry", "30d",
                "--max-expiry", "365d")
        service = KeyService(db)
        downloads = os.path.join(tmp, "downloads")
        os.mkdir(downloads)
        console = None
        gateway = None
        failed = []
        try:
            gateway = Gateway(service.base, tmp)
            console = Console(service.base, downloads)
            if args.screenshots:
                os.makedirs(args.screenshots, exist_ok=True)
                console.shots = os.path.abspath(args.screenshots)
            ctx = {"db": db, "admin": admin["admin_key"], "admin_id": admin["id"],
                   "api": Api(service.base, admin["admin_key"]), "gateway": gateway}
            for flow in FLOWS:
                if args.k and args.k not in flow.__name__ and flow is not FLOWS[0]:
                    continue
                t = time.time()
                try:
                    flow(console, ctx)
                    print(f"ok   {flow.__name__} ({time.time() - t:.1f}s)")
                except Exception:
                    failed.append(flow.__name__)
                    print(f"FAIL {flow.__name__}")
                    traceback.print_exc()
                    if console.shots:
                        console.shot("failed-" + flow.__name__)
                    break
        finally:
            if console:
                console.quit()
            if gateway:
                gateway.stop()
            service.stop()
    if failed:
        print("keygate serve log:\n" + "".join(service.log), file=sys.stderr)
        print(f"console test: FAILED {', '.join(failed)} ({time.time() - started:.1f}s)")
        return 1
    print(f"console test: {len(FLOWS)} flows passed ({time.time() - started:.1f}s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
