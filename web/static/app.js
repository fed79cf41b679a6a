// The dashboard's JavaScript: plain DOM, the JSON API with the session cookie and the
// page's CSRF token. Text from the server is always set as text, never as HTML.
const wakeful = (() => {
  "use strict";
  const csrf = document.querySelector('meta[name="csrf-token"]')?.content || "";

  async function api(method, path, body) {
    const options = { method, credentials: "same-origin", headers: { "X-CSRF-Token": csrf } };
    if (body !== undefined) {
      options.headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(body);
    }
    const response = await fetch(path, options);
    const text = await response.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = null; }
    if (!response.ok) {
      const detail = data && (data.errors
        ? data.errors.map((e) => `${e.field}: ${e.message}`).join("; ")
        : data.detail);
      throw new Error(detail || `HTTP ${response.status}`);
    }
    return data;
  }

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (key === "on") {
        for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
      } else if (value !== null && value !== undefined) {
        node.setAttribute(key, value);
      }
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child ?? "")));
    }
    return node;
  }

  const when = (iso) => (iso ? new Date(iso).toLocaleString() : "never");
  const say = (id, text, bad = false) => {
    const node = document.getElementById(id);
    if (!node) return;
    node.textContent = text;
    node.classList.toggle("error", bad);
  };

  function every(ms, step) {
    const run = async () => {
      try { await step(); } catch (err) { console.warn(err); }
    };
    run();
    return setInterval(run, ms);
  }

  // Overview ---------------------------------------------------------------------------

  const STARTABLE = ["IDLE", "STOPPED", "EXPIRED", "DISCONNECTED", "SUSPENDED", "LOGGED_OUT"];
  const ACTIONS = [
    ["start", "Start"], ["stop", "Stop"], ["restart", "Restart"], ["logout", "Log out"],
  ];

  function botRow(bot) {
    const act = async (action, label) => {
      try {
        if (action === "delete") {
          if (!confirm(`Delete bot '${bot.name}' and its profile?`)) return;
          await api("DELETE", `/api/sessions/${bot.id}`);
          say("bots-message", `Deleted ${bot.name}.`);
        } else {
          const updated = await api("POST", `/api/sessions/${bot.id}/${action}`);
          say("bots-message", `${label}: ${bot.name} is ${updated.state}.`);
        }
        await loadBots();
      } catch (err) {
        say("bots-message", `${label} ${bot.name}: ${err.message}`, true);
      }
    };
    const buttons = ACTIONS.map(([action, label]) =>
      el("button", { type: "button", "aria-label": `${label} ${bot.name}`, on: { click: () => act(action, label) } }, label));
    buttons.push(el("button", { type: "button", class: "danger", "aria-label": `Delete ${bot.name}`,
      on: { click: () => act("delete", "Delete") } }, "Delete"));
    return el("tr", { "data-bot": bot.id },
      el("td", { class: "name" }, el("a", { href: `/bots/${bot.id}` }, bot.name)),
      el("td", { class: "state" }, bot.state),
      el("td", {}, bot.health),
      el("td", {}, when(bot.lastActivity)),
      el("td", { class: "actions" }, ...buttons));
  }

  async function loadBots() {
    const data = await api("GET", "/api/sessions?limit=200");
    const body = document.querySelector("#bot-table tbody");
    body.replaceChildren(...data.sessions.map(botRow));
    if (!data.sessions.length) {
      body.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "No bots yet: create one above.")));
    }
  }

  function overview() {
    document.getElementById("create-bot").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = document.getElementById("bot-name");
      try {
        const bot = await api("POST", "/api/sessions", { name: input.value });
        input.value = "";
        say("bots-message", `Created ${bot.name}. Open it to link WhatsApp.`);
        await loadBots();
      } catch (err) {
        say("bots-message", `Not created: ${err.message}`, true);
      }
    });
    every(5000, loadBots);
  }

  // Bot page ---------------------------------------------------------------------------

  function botPage(id) {
    let shownQr = null;
    const qrBox = document.getElementById("qr-box");
    const connected = document.getElementById("connected");

    async function refresh() {
      const bot = await api("GET", `/api/sessions/${id}`);
      document.getElementById("state").textContent = bot.state;
      document.getElementById("start").hidden = !STARTABLE.includes(bot.state);
      document.getElementById("reason").textContent = bot.stateReason ? `(${bot.stateReason})` : "";
      if (bot.state === "CONNECTED") {
        qrBox.hidden = true;
        connected.hidden = false;
        connected.textContent = bot.linkedAs ? `Connected as ${bot.linkedAs}` : "Connected";
        shownQr = null;
      } else {
        connected.hidden = true;
      }
      if (bot.qrAvailable && bot.state !== "CONNECTED") {
        const response = await fetch(`/api/sessions/${id}/qr`, {
          credentials: "same-origin", headers: { Accept: "application/json" },
        });
        if (response.ok) {
          const qr = await response.json();
          if (qr.generatedAt !== shownQr) {
            document.getElementById("qr").src = `data:${qr.mediaType};base64,${qr.image}`;
            shownQr = qr.generatedAt;
          }
          qrBox.hidden = false;
        }
      } else if (bot.state !== "SCAN_QR") {
        qrBox.hidden = true;
      }
      document.getElementById("history").replaceChildren(...bot.history.map((t) =>
        el("li", {}, `${when(t.at)}: ${t.from || "—"} → ${t.to}`, t.reason ? ` (${t.reason})` : "")));
    }

    // Redrawn only when it changed: each image is a fetch through the bot's WhatsApp Web.
    let shownReceived = null;
    function receivedItem(m) {
      const who = m.phone || m.from;
      const item = el("li", { "data-message": m.id }, `${when(m.receivedAt)} ← ${who}: `,
        m.type !== "chat" ? `(${m.type}) ` : "", el("span", { class: "text" }, m.body));
      if (m.media) {
        const name = m.media.filename || `${m.type} (${m.media.mimetype || "file"})`;
        item.append(" ", el("a", { href: m.media.url, download: m.media.filename || "" }, `Download ${name}`));
        if ((m.media.mimetype || "").startsWith("image/")) {
          item.append(el("br"), el("img", { src: m.media.url, alt: m.body || `image from ${who}`,
            class: "received-image", loading: "lazy" }));
        }
      }
      return item;
    }
    async function refreshReceived() {
      const data = await api("GET", `/api/sessions/${id}/received`);
      const key = data.received.map((m) => m.id).join(" ");
      if (key === shownReceived) return;
      shownReceived = key;
      document.getElementById("received").replaceChildren(...(data.received.length
        ? data.received.map(receivedItem)
        : [el("li", { class: "muted" }, "Nothing received yet.")]));
    }

    async function refreshLists() {
      const messages = await api("GET", `/api/sessions/${id}/messages?limit=20`);
      document.getElementById("messages").replaceChildren(...messages.messages.map((m) =>
        el("li", {}, `${when(m.createdAt)} → ${m.to}: `,
          m.kind && m.kind !== "text" ? `(${m.kind}) ` : "", el("span", { class: "text" }, m.text),
          ` [${m.status}${m.lastError ? `: ${m.lastError}` : ""}]`)));
      await refreshReceived();
      const deliveries = await api("GET", `/api/sessions/${id}/deliveries`);
      const items = deliveries.deliveries.map((d) =>
        el("li", {}, `${when(d.createdAt)} ${d.event}: ${d.status}`,
          d.lastStatus ? ` (HTTP ${d.lastStatus})` : "", d.lastError ? ` ${d.lastError}` : ""));
      document.getElementById("deliveries").replaceChildren(
        ...(items.length ? items : [el("li", { class: "muted" }, "No webhook deliveries.")]));
    }

    document.getElementById("start").addEventListener("click", async () => {
      try {
        const bot = await api("POST", `/api/sessions/${id}/start`);
        say("bot-message", `Started: ${bot.state}.`);
        await refresh();
      } catch (err) {
        say("bot-message", `Not started: ${err.message}`, true);
      }
    });
    const scan = document.getElementById("simulate-scan");
    if (scan) {
      scan.addEventListener("click", async () => {
        try {
          await api("POST", `/api/sessions/${id}/simulator`, { action: "scan" });
          say("bot-message", "The simulated phone scanned the QR code.");
        } catch (err) {
          say("bot-message", `Simulated scan failed: ${err.message}`, true);
        }
      });
    }
    document.getElementById("pair").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const code = await api("POST", `/api/sessions/${id}/pair`,
          { phone: document.getElementById("pair-phone").value });
        say("pair-code", `Type this code on the phone: ${code.display}`);
      } catch (err) {
        say("pair-code", `No pairing code: ${err.message}`, true);
      }
    });
    document.getElementById("send").addEventListener("submit", async (event) => {
      event.preventDefault();
      try {
        const sent = await api("POST", `/api/sessions/${id}/messages`, {
          to: document.getElementById("send-to").value,
          text: document.getElementById("send-text").value,
        });
        document.getElementById("send-text").value = "";
        say("bot-message", `Message ${sent.id} queued.`);
        await refreshLists();
      } catch (err) {
        say("bot-message", `Not sent: ${err.message}`, true);
      }
    });
    // The file as base64 (what the send API takes), read in the browser.
    const asBase64 = (file) => new Promise((resolve, reject) => {
      const reader = new FileReader();
      reader.onload = () => resolve(String(reader.result).split(",", 2)[1] || "");
      reader.onerror = () => reject(reader.error || new Error("the file could not be read"));
      reader.readAsDataURL(file);
    });
    document.getElementById("send-image").addEventListener("submit", async (event) => {
      event.preventDefault();
      const file = document.getElementById("image-file").files[0];
      const caption = document.getElementById("image-caption").value;
      try {
        if (!file) throw new Error("choose an image first");
        const media = { type: "image", mimetype: file.type, data: await asBase64(file) };
        if (caption) media.caption = caption;
        const sent = await api("POST", `/api/sessions/${id}/messages`,
          { to: document.getElementById("send-to").value, media });
        event.target.reset();
        say("bot-message", `Image ${sent.id} queued.`);
        await refreshLists();
      } catch (err) {
        say("bot-message", `Image not sent: ${err.message}`, true);
      }
    });
    every(1500, refresh);
    every(3000, refreshLists);
  }

  // Admin ------------------------------------------------------------------------------

  function adminPage() {
    async function loadUsers() {
      const data = await api("GET", "/api/users");
      document.querySelector("#user-table tbody").replaceChildren(...data.users.map((u) =>
        el("tr", {},
          el("td", { class: "name" }, u.name), el("td", {}, u.id), el("td", {}, u.sessions),
          el("td", {}, el("button", { type: "button", class: "danger", "aria-label": `Delete ${u.name}`,
            on: { click: async () => {
              if (!confirm(`Delete ${u.name} and all their bots?`)) return;
              await api("DELETE", `/api/users/${u.id}`);
              await loadUsers();
            } } }, "Delete")))));
    }
    async function loadJobs() {
      const data = await api("GET", "/api/jobs");
      document.querySelector("#job-table tbody").replaceChildren(...data.jobs.map((j) => {
        const run = async (action) => {
          try {
            await api("POST", `/api/jobs/${j.name}/${action}`);
            say("jobs-message", `${j.name}: ${action} done.`);
            await loadJobs();
          } catch (err) {
            say("jobs-message", `${j.name}: ${err.message}`, true);
          }
        };
        return el("tr", {},
          el("td", {}, `${j.name} (${j.state})`), el("td", {}, when(j.nextRunAt)),
          el("td", { class: "text" }, j.lastError ? `error: ${j.lastError}` : JSON.stringify(j.lastResult)),
          el("td", { class: "actions" },
            el("button", { type: "button", on: { click: () => run("run") } }, "Run now"),
            j.state === "paused"
              ? el("button", { type: "button", on: { click: () => run("resume") } }, "Resume")
              : el("button", { type: "button", on: { click: () => run("pause") } }, "Pause")));
      }));
    }
    document.getElementById("create-user").addEventListener("submit", async (event) => {
      event.preventDefault();
      const input = document.getElementById("user-name");
      try {
        const user = await api("POST", "/api/users", { name: input.value });
        input.value = "";
        say("new-token", `Token for ${user.name} (shown once, copy it now): ${user.token}`);
        await loadUsers();
      } catch (err) {
        say("new-token", `Not created: ${err.message}`, true);
      }
    });
    every(5000, loadUsers);
    every(5000, loadJobs);
  }

  return { overview, botPage, adminPage, api };
})();

// Each page names itself on <body> (no inline script: the Content-Security-Policy forbids it).
(() => {
  const { page, botId } = document.body.dataset;
  if (page === "overview") wakeful.overview();
  else if (page === "bot") wakeful.botPage(botId);
  else if (page === "admin") wakeful.adminPage();
})();
