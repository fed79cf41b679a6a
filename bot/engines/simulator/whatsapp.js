// A stand-in for WhatsApp Web: the module surface the bridge reads, backed by a fake server.
//
// It keeps its "link" where WhatsApp Web keeps its keys, in IndexedDB and Local Storage of
// the browser profile, so a restart without a new scan and a restore from the profile
// backup are proved through the real profile. The "phone" drives it through
// `window.__waSim` (the Python Simulator calls it with page.evaluate); messages the bot
// sends go to the `__wakefulSimSent` binding, which the Simulator records as "delivered".
(() => {
  "use strict";
  const cfg = window.__SIM_CONFIG || { qrEvery: 20000, qrRefs: 6, version: "2.3000.0-sim" };
  const LINK_DB = "wawc";
  const LINK_STORE = "user";
  const LINK_KEY = "last-wid-md";

  class Emitter {
    constructor() { this._handlers = {}; }
    on(event, fn) { (this._handlers[event] ||= []).push(fn); return this; }
    off(event, fn) {
      this._handlers[event] = (this._handlers[event] || []).filter((h) => h !== fn);
      return this;
    }
    emit(event, ...args) {
      for (const fn of [...(this._handlers[event] || [])]) {
        try { fn(...args); } catch (err) { console.error(err); }
      }
    }
  }

  class Model extends Emitter {
    set(key, value) {
      const old = this[key];
      this[key] = value;
      if (old !== value) this.emit(`change:${key}`, this, value);
    }
  }

  class Collection extends Emitter {
    constructor(keep = Infinity) { super(); this._models = new Map(); this._keep = keep; }
    add(model) {
      this._models.set(model.id._serialized, model);
      // A phone keeps its history; a demo page open for days must not grow without end.
      if (this._models.size > this._keep) this._models.delete(this._models.keys().next().value);
      this.emit("add", model);
      return [model];
    }
    get(id) { return this._models.get(typeof id === "string" ? id : id?._serialized); }
    getModelsArray() { return [...this._models.values()]; }
  }

  class Wid {
    constructor(serialized) {
      const [user, server] = serialized.split("@");
      this.user = user.split(":")[0];
      this.server = server || "c.us";
      this._serialized = `${this.user}@${this.server}`;
    }
    isLid() { return this.server === "lid"; }
    isGroup() { return this.server === "g.us"; }
    toString() { return this._serialized; }
  }

  const randomB64 = (bytes) =>
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(bytes))));
  const randomHex = (bytes) =>
    [...crypto.getRandomValues(new Uint8Array(bytes))]
      .map((b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();

  class MsgKey {
    constructor({ from, to, id, selfDir, fromMe }) {
      this.fromMe = fromMe ?? selfDir === "out";
      this.remote = this.fromMe ? to : from;
      this.id = id;
      this._serialized = `${this.fromMe}_${this.remote}_${id}`;
    }
    static async newId() { return "3EB0" + randomHex(8); }
    toString() { return this._serialized; }
  }

  const Socket = new Model();
  Socket.state = "OPENING";
  Socket.hasSynced = false;
  const Conn = new Model();
  Conn.ref = null;
  Conn.wid = null;
  const Cmd = new Emitter();
  const Msg = new Collection(200);
  let sentCount = 0;
  const Chat = new Collection();

  // Keys a real client would create once per page load for the QR payload.
  const noiseKey = randomB64(32);
  const identityKey = randomB64(32);
  const advSecret = randomB64(32);

  let qrTimer = null;
  let refsShown = 0;
  let pairingCode = null;
  let dropped = false;

  // Storage of the link: the profile is the only place it lives.
  const openDb = () =>
    new Promise((resolve, reject) => {
      const req = indexedDB.open(LINK_DB, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(LINK_STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  const dbRequest = async (mode, action) => {
    const db = await openDb();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction(LINK_STORE, mode);
        const req = action(tx.objectStore(LINK_STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
      });
    } finally {
      db.close();
    }
  };
  const saveLink = async (me) => {
    await dbRequest("readwrite", (s) => s.put({ me, noiseKey, identityKey, advSecret }, "keys"));
    localStorage.setItem(LINK_KEY, JSON.stringify(`${me}:7@c.us`));
  };
  // The keys in IndexedDB are the link; Local Storage only remembers whose it is, and
  // Chromium writes it to disk lazily, so a killed browser may lose it: rebuild it then.
  const loadLink = async () => {
    const keys = await dbRequest("readonly", (s) => s.get("keys"));
    if (!keys || !keys.me) return null;
    if (!localStorage.getItem(LINK_KEY)) localStorage.setItem(LINK_KEY, JSON.stringify(`${keys.me}:7@c.us`));
    return keys.me;
  };
  const clearLink = async () => {
    localStorage.removeItem(LINK_KEY);
    await dbRequest("readwrite", (s) => s.delete("keys"));
  };

  // The screen, roughly as WhatsApp Web lays it out, so the DOM fallback has a target.
  const app = document.getElementById("app");
  const render = () => {
    const state = Socket.state;
    let body;
    if (state === "CONNECTED") {
      body = `<div ${chatLoaded ? 'data-testid="intro-md-beta-logo-light"' : ""} class="intro">Connected as +${Conn.wid?.user}</div>
        <ul id="chat">${Msg.getModelsArray().slice(-50).map((m) =>
          `<li class="${m.id.fromMe ? "out" : "in"}">${m.id.fromMe ? "→ " + m.to : "← " + m.from}: ${
            String(m.body).replace(/[<&]/g, "")}</li>`).join("")}</ul>`;
    } else if (Conn.ref && (state === "UNPAIRED" || state === "UNPAIRED_IDLE")) {
      body = `<div data-ref="${Conn.ref}"><canvas width="264" height="264" aria-label="Scan me!"></canvas>
        ${state === "UNPAIRED_IDLE" ? "<span><button>Click to reload QR code</button></span>" : ""}</div>
        ${pairingCode ? `<div class="code" aria-label="Pairing code">${pairingCode}</div>` : ""}`;
    } else {
      body = `<progress value="50" max="100"></progress><div>${state}</div>`;
    }
    app.innerHTML = `<header>WhatsApp Web: <b>SIMULATOR</b> (demo, not WhatsApp)</header>${body}`;
  };
  Socket.on("change:state", render);
  Conn.on("change:ref", render);
  Msg.on("add", render);

  const stopQr = () => {
    clearTimeout(qrTimer);
    qrTimer = null;
  };
  const nextRef = () => {
    if (refsShown >= cfg.qrRefs) {
      stopQr();
      Socket.set("state", "UNPAIRED_IDLE");
      return;
    }
    refsShown += 1;
    Conn.set("ref", `2@${randomB64(45)}`);
    qrTimer = setTimeout(nextRef, cfg.qrEvery);
  };
  const startQr = () => {
    stopQr();
    refsShown = 0;
    Socket.set("state", "UNPAIRED");
    nextRef();
  };
  // A new QR voids a pairing code being typed, as on the real service.
  Cmd.refreshQR = () => {
    if (Socket.state === "UNPAIRED_IDLE" || Socket.state === "UNPAIRED") {
      pairingCode = null;
      startQr();
    }
  };

  // The chat bundle loads after the account synced: until then its modules do not exist.
  let chatLoaded = false;
  const connect = async (me) => {
    Conn.set("wid", new Wid(`${me}@c.us`));
    Socket.set("state", "OPENING");
    await new Promise((r) => setTimeout(r, 150));
    Socket.set("state", "CONNECTED");
    Socket.set("hasSynced", true);
    setTimeout(() => { chatLoaded = true; render(); }, 300);
  };
  const link = async (me) => {
    stopQr();
    pairingCode = null;
    Socket.set("state", "PAIRING");
    Conn.set("ref", null);
    await saveLink(me);
    await connect(me);
  };

  Socket.logout = async () => {
    await clearLink();
    Cmd.emit("logout");
    Socket.set("hasSynced", false);
    Socket.set("state", "UNPAIRED");
    setTimeout(() => location.replace("/?post_logout=1"), 50);
  };

  const requireConnected = () => {
    if (Socket.state !== "CONNECTED" || dropped) throw new Error(`not connected (${Socket.state})`);
  };

  // As in WhatsApp Web: two promises, the message added to the chat, and the server's ack.
  function addAndSendMsgToChat(chat, msg) {
    requireConnected();
    Msg.add(msg);
    sentCount += 1;
    // Through a binding, not a routed fetch: Playwright keeps every routed request's
    // objects until the page closes, which grew the server by ~15 KB per message.
    const sent = window.__wakefulSimSent({
      id: msg.id._serialized, to: chat.id._serialized, body: msg.body, t: msg.t,
    }).then(() => {
      msg.ack = 1;
      return "OK";
    });
    return [Promise.resolve(msg), sent];
  }

  const CHAT_MODULES = new Set([
    "WAWebCollections", "WAWebSendMsgChatAction", "WAWebFindChatAction", "WAWebWidFactory",
    "WAWebMsgKey", "WAWebUserPrefsMeUser",
  ]);
  const modules = {
    WAWebSocketModel: { Socket },
    WAWebConnModel: { Conn },
    WAWebCmd: { Cmd },
    WAWebCollections: { Msg, Chat },
    WAWebSendMsgChatAction: { addAndSendMsgToChat },
    WAWebFindChatAction: {
      findOrCreateLatestChat: async (wid) => {
        const chat = Chat.get(wid._serialized) || Chat.add({ id: wid })[0];
        return { chat, created: false };
      },
    },
    WAWebWidFactory: { createWid: (id) => new Wid(String(id)) },
    WAWebMsgKey: MsgKey,
    WAWebUserPrefsMeUser: { getMaybeMePnUser: () => Conn.wid, getMaybeMeLidUser: () => null },
    WAWebAltDeviceLinkingApi: {
      setPairingType: () => undefined,
      initializeAltDeviceLinking: async () => undefined,
      startAltLinkingFlow: async (phone) => {
        if (!/^\d{7,15}$/.test(String(phone))) throw new Error("invalid phone number");
        if (Socket.state !== "UNPAIRED" && Socket.state !== "UNPAIRED_IDLE") {
          throw new Error(`cannot pair in state ${Socket.state}`);
        }
        const letters = "ABCDEFGHJKLMNPQRSTVWXYZ0123456789";
        pairingCode = [...crypto.getRandomValues(new Uint8Array(8))]
          .map((b) => letters[b % letters.length]).join("");
        render();
        return pairingCode;
      },
    },
    WABase64: { encodeB64: (value) => String(value) },
    WAWebSignalStoreApi: {
      waSignalStore: { getRegistrationInfo: async () => ({ identityKeyPair: { pubKey: identityKey } }) },
    },
    WAWebUserPrefsInfoStore: { waNoiseInfo: { get: async () => ({ staticKeyPair: { pubKey: noiseKey } }) } },
    WAWebAdvSignatureApi: { getADVSecretKey: async () => advSecret },
    WAWebCompanionRegClientUtils: { DEVICE_PLATFORM: "Chrome" },
  };
  window.require = (name) => {
    if (!(name in modules) || (CHAT_MODULES.has(name) && !chatLoaded)) {
      throw new Error(`Requiring unknown module "${name}"`);
    }
    return modules[name];
  };
  window.Debug = { VERSION: cfg.version };

  // The phone, and WhatsApp's servers, as the Python Simulator drives them.
  window.__waSim = {
    status: () => ({
      state: Socket.state,
      ref: Conn.ref,
      pairingCode,
      me: Conn.wid ? Conn.wid.user : null,
      sentSeen: sentCount,
    }),
    scan: async (me) => {
      if (!Conn.ref) throw new Error(`no QR code is showing (state ${Socket.state})`);
      const scanned = Conn.ref;
      await link(me);
      return scanned;
    },
    enterCode: async (code, me) => {
      if (!pairingCode) throw new Error("no pairing code was requested");
      if (String(code).toUpperCase() !== pairingCode) throw new Error("wrong pairing code");
      await link(me);
    },
    // `encrypted`: the message arrives undecrypted first, as WhatsApp often delivers them.
    incoming: (from, body, encrypted) => {
      requireConnected();
      const id = new MsgKey({ from, to: Conn.wid._serialized, id: "SIM" + randomHex(8), fromMe: false });
      const msg = Object.assign(new Model(), {
        id, from: new Wid(from), to: Conn.wid, body: encrypted ? "" : body,
        t: Math.floor(Date.now() / 1000), type: encrypted ? "ciphertext" : "chat", isNewMsg: true,
      });
      Msg.add(msg);
      if (encrypted) {
        setTimeout(() => { msg.body = body; msg.set("type", "chat"); render(); }, 200);
      }
      return id._serialized;
    },
    // The phone's logout reaches the page from the server, after this call has returned
    // (the bot closes its browser as soon as it hears of it).
    phoneLogout: () => {
      setTimeout(() => Socket.logout(), 0);
      return true;
    },
    conflict: () => Socket.set("state", "CONFLICT"),
    drop: () => {
      dropped = true;
      Socket.set("state", "TIMEOUT");
    },
  };

  (async () => {
    render();
    const me = await loadLink();
    if (me) {
      await connect(me);
    } else {
      startQr();
    }
  })();
})();
