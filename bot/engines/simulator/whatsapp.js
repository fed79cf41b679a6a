// A stand-in for WhatsApp Web as the maintained clients see it today, backed by a fake server.
//
// What makes it realistic (each switchable through `window.__SIM_CONFIG`, see Behaviour in
// __init__.py; the realistic choice is the default):
// - modules arrive over time through a `__d` / `require` / `importNamespace` loader, the
//   chat modules only once the account has synced; `window.Debug` is set late or never;
// - the ADV secret lives in `WAWebUserPrefsMultiDevice` (the old WAWebAdvSignatureApi is gone);
// - accounts and contacts have LIDs: senders arrive as `…@lid`, a phone-number chat is
//   redirected to its LID chat, `findOrCreateLatestChat` returns a plain object and refuses
//   to create a LID chat for an origin outside WhatsApp's allow list;
// - message keys keep their serialized form in a minified property (`toString()` reads it);
// - a send's second promise resolves to `{messageSendResult}`, "OK" or an `ERROR_*` value;
// - status broadcasts, group notifications, system and revoked messages arrive in `Msg`;
// - incoming stanzas pass `Msg.processMultipleMessages` first; replies carry the quoted
//   message's stanza id and participant; reactions are written through the reaction
//   table's `bulkUpsert`; edits and revokes arrive as `protocol` messages that change the
//   original in place; media messages carry a thumbnail as `body`, and their file is
//   fetched encrypted from the media host and decrypted by `WAWebDownloadManager`;
//   messages that cannot be decrypted stay `ciphertext` until the page asks the phone to
//   resend them (a placeholder resend, off behind WhatsApp's own switch by default);
// - the first sync after a scan takes a while and reports its progress;
// - pairing codes expire; the phone's logout arrives as Cmd `logout_from_bridge`;
// - a HeadlessChrome user agent or client hint gets the unsupported-browser page.
//
// It keeps its "link" where WhatsApp Web keeps its keys, in IndexedDB and Local Storage of
// the browser profile, so a restart without a new scan and a restore from the profile
// backup are proved through the real profile. The "phone" drives it through
// `window.__waSim` (the Python Simulator calls it with page.evaluate); messages the bot
// sends go to the `__wakefulSimSent` binding, which the Simulator records.
(() => {
  "use strict";
  const cfg = {
    qrEvery: 20000, qrRefs: 6, version: "2.3000.1044999999",
    debug: "never", loaderDelay: 300, moduleEvery: 250, withhold: [],
    advModule: "WAWebUserPrefsMultiDevice", lidContacts: true, minifiedKeys: true,
    syncMs: 1500, resyncMs: 300, pairCodeTtl: 195000, headlessCheck: true,
    logoutSignal: "logout_from_bridge",
    // Contacts and groups: the numbers on WhatsApp, the bot's groups, and how many number
    // checks WhatsApp's servers take in a window before they unlink the device for it.
    registered: ["15550000001", "15550000002", "15550000003"], groups: [],
    existsLimit: 30, existsWindowMs: 60000,
    ...(window.__SIM_CONFIG || {}),
  };
  const LINK_DB = "wawc";
  const LINK_STORE = "user";
  const LINK_KEY = "last-wid-md";
  const app = document.getElementById("app");

  // WhatsApp Web shows this page, and never boots, to a browser calling itself headless.
  const brands = (navigator.userAgentData && navigator.userAgentData.brands) || [];
  const headless = /HeadlessChrome/.test(navigator.userAgent)
    || brands.some((b) => /HeadlessChrome/.test(b.brand));
  if (cfg.headlessCheck && headless) {
    document.title = "WhatsApp Web: unsupported browser";
    app.innerHTML = '<div id="unsupported">WhatsApp works with Google Chrome 85+. '
      + "To use WhatsApp, update Chrome or use Mozilla Firefox, Safari, Microsoft Edge or Opera.</div>";
    window.__waSim = { status: () => ({ unsupported: true, state: "UNSUPPORTED_BROWSER" }) };
    return;
  }

  class Emitter {
    constructor() { this._handlers = {}; }
    on(event, fn) {
      for (const name of event.split(" ")) (this._handlers[name] ||= []).push(fn);
      return this;
    }
    off(event, fn) {
      this._handlers[event] = (this._handlers[event] || []).filter((h) => h !== fn);
      return this;
    }
    once(event, fn) {
      const wrapped = (...args) => { this.off(event, wrapped); fn(...args); };
      return this.on(event, wrapped);
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
      if (old === value) return;
      this.emit(`change:${key}`, this, value, old);
      // As in WhatsApp's collections, a model's changes are heard on its collection too.
      if (this.collection) {
        this.collection.emit(`change:${key}`, this, value, old);
        this.collection.emit("change", this);
      }
    }
  }

  class Collection extends Emitter {
    constructor(keep = Infinity) { super(); this._models = new Map(); this._keep = keep; }
    add(model) {
      this._models.set(String(model.id), model);
      if (model instanceof Emitter) Object.defineProperty(model, "collection", { value: this, configurable: true });
      // A phone keeps its history; a demo page open for days must not grow without end.
      if (this._models.size > this._keep) this._models.delete(this._models.keys().next().value);
      this.emit("add", model);
      return [model];
    }
    get(id) { return this._models.get(String(id)); }
    getModelsArray() { return [...this._models.values()]; }
  }

  class Wid {
    constructor(serialized) {
      const [user, server] = String(serialized).split("@");
      this.user = user.split(":")[0];
      this.server = server || "c.us";
      this._serialized = `${this.user}@${this.server}`;
    }
    isLid() { return this.server === "lid"; }
    isGroup() { return this.server === "g.us"; }
    isUser() { return this.server === "c.us" || this.server === "lid"; }
    isStatus() { return this._serialized === "status@broadcast"; }
    equals(other) { return Boolean(other) && String(other) === this._serialized; }
    toString() { return this._serialized; }
  }
  const wid = (value) => (value instanceof Wid ? value : new Wid(value));

  const randomB64 = (bytes) =>
    btoa(String.fromCharCode(...crypto.getRandomValues(new Uint8Array(bytes))));
  const randomHex = (bytes) =>
    [...crypto.getRandomValues(new Uint8Array(bytes))]
      .map((b) => b.toString(16).padStart(2, "0")).join("").toUpperCase();

  // WhatsApp ≥ 2.3000.1042401057 keeps a key's serialized form in a minified property: only
  // `toString()` gives it. `minifiedKeys: false` brings back the old `_serialized`.
  class MsgKey {
    constructor({ from, to, id, selfDir, fromMe, participant }) {
      this.fromMe = fromMe ?? selfDir === "out";
      this.remote = wid(this.fromMe ? to : from);
      this.id = id;
      this.participant = participant ? wid(participant) : undefined;
      const text = `${this.fromMe}_${this.remote}_${id}${this.participant ? `_${this.participant}` : ""}`;
      Object.defineProperty(this, cfg.minifiedKeys ? "$1" : "_serialized", { value: text, enumerable: false });
    }
    static async newId() { return "3EB0" + randomHex(8); }
    toString() { return this.$1 || this._serialized; }
  }

  // A LID is a number of its own, known to WhatsApp for every migrated account.
  const lidOf = (phone) => {
    let h = 0n;
    for (const c of String(phone)) h = (h * 131n + BigInt(c.charCodeAt(0))) % 10n ** 14n;
    return `${(h + 10n ** 14n).toString()}`;
  };
  const phoneOfLid = new Map();
  const lidWidFor = (phone) => {
    const lid = `${lidOf(phone)}@lid`;
    phoneOfLid.set(lid, `${phone}@c.us`);
    return new Wid(lid);
  };

  const Socket = new Model();
  Socket.state = "OPENING";
  Socket.hasSynced = false;
  const Conn = new Model();
  Conn.ref = null;
  Conn.wid = null;
  const Stream = new Model();
  Stream.mode = "SYNCING";
  Stream.needsUpdate = false;
  const Cmd = new Emitter();
  const Msg = new Collection(200);
  const Chat = new Collection();
  let sentCount = 0;
  let offlineProgress = 0;
  let me = null; // the linked phone number
  let meLid = null;

  // Keys a real client would create once per page load for the QR payload.
  const noiseKey = randomB64(32);
  const identityKey = randomB64(32);
  const advSecret = randomB64(32);

  let qrTimer = null;
  let refsShown = 0;
  let pairing = null; // {code, issuedAt, phone}
  let dropped = false;
  const sendResults = new Map(); // recipient (phone, LID or group id) -> messageSendResult

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
  const saveLink = async (phone) => {
    await dbRequest("readwrite", (s) => s.put({ me: phone, noiseKey, identityKey, advSecret }, "keys"));
    localStorage.setItem(LINK_KEY, JSON.stringify(`${phone}:7@c.us`));
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

  // The screen, for a person watching the demo (no bot reads it).
  const escape = (text) => String(text).replace(/[<&]/g, "");
  const render = () => {
    const state = Socket.state;
    let body;
    if (state === "CONNECTED" && Socket.hasSynced) {
      body = `<div class="intro">Connected as +${me}</div>
        <ul id="chat">${Msg.getModelsArray().slice(-50).map((m) =>
          `<li class="${m.id.fromMe ? "out" : "in"}">${m.id.fromMe ? "→ " + m.to : "← " + m.from}: ${
            escape(m.body)}</li>`).join("")}</ul>`;
    } else if (Conn.ref && (state === "UNPAIRED" || state === "UNPAIRED_IDLE")) {
      body = `<div class="qr"><canvas width="264" height="264" aria-label="Scan me!"></canvas>
        ${state === "UNPAIRED_IDLE" ? "<span><button>Click to reload QR code</button></span>" : ""}</div>
        ${pairing ? `<div class="code" aria-label="Pairing code">${pairing.code}</div>` : ""}`;
    } else if (me) {
      body = `<progress value="${offlineProgress}" max="100"></progress><div>Loading your chats [${offlineProgress}%]</div>`;
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
    Stream.set("mode", "QR");
    Socket.set("state", "UNPAIRED");
    nextRef();
  };
  // A new QR voids a pairing code being typed, as on the real service.
  Cmd.refreshQR = () => {
    if (Socket.state === "UNPAIRED_IDLE" || Socket.state === "UNPAIRED") {
      pairing = null;
      startQr();
    }
  };

  // The module loader --------------------------------------------------------------------
  const registry = {}; // what `require('__debug').modulesMap` lists
  const loaded = {};
  let skipGuard = false;
  const load = (name) => {
    const entry = registry[name];
    if (!entry) {
      const err = new Error(`Requiring unknown module "${name}"`);
      // WhatsApp's error guard reports a failed require unless told to skip it.
      if (!skipGuard) console.warn("ErrorGuard:", err.message);
      throw err;
    }
    if (!(name in loaded)) loaded[name] = entry.factory();
    return loaded[name];
  };

  const chatModel = (id) => {
    const existing = Chat.get(id);
    if (existing) return existing;
    const chat = Object.assign(new ChatModel(), { id: wid(id), ephemeralDuration: 0 });
    if (chat.id.isGroup()) chat.groupMetadata = { isLidAddressingMode: true, participants: [] };
    Chat.add(chat);
    return chat;
  };
  class ChatModel extends Model {
    getLastMsgKeyForAction() { return null; }
  }

  const VALID_LID_ORIGINS = new Set(["createChat", "username_contactless_search", "username_change_notification"]);
  const findOrCreateLatestChat = async (target, origin) => {
    let id = wid(target);
    // A migrated contact's chat lives under its LID: the phone-number chat is redirected.
    if (cfg.lidContacts && id.server === "c.us") id = lidWidFor(id.user);
    const existing = Chat.get(id);
    if (!existing && id.isLid() && !VALID_LID_ORIGINS.has(origin)) {
      throw new Error(`WAWebCreateChat: chat origin "${origin}" may not create a LID chat`);
    }
    const chat = existing || chatModel(id);
    // A plain object with the id, not the ChatModel: read the model from the chat store.
    return { chat: { id: chat.id, t: chat.t || 0 }, created: !existing };
  };

  const requireConnected = () => {
    if (Socket.state !== "CONNECTED" || dropped) throw new Error(`not connected (${Socket.state})`);
  };

  const expectedSender = (chat) => {
    if (chat.id.isGroup()) return chat.groupMetadata?.isLidAddressingMode ? meLid : `${me}@c.us`;
    return chat.id.isLid() ? meLid : `${me}@c.us`;
  };

  // As in WhatsApp Web: two promises, the message added to the chat, and the send result.
  function addAndSendMsgToChat(chat, msg) {
    requireConnected();
    if (!(chat instanceof ChatModel)) throw new TypeError("chat.getLastMsgKeyForAction is not a function");
    const content = contentRecord(chat, msg);
    Msg.add(msg);
    sentCount += 1;
    const chosen = sendResults.get(String(chat.id))
      || sendResults.get(phoneOfLid.get(String(chat.id)) || "") || "OK";
    const record = {
      ...content,
      id: String(msg.id),
      to: String(chat.id),
      body: msg.body,
      t: msg.t,
      from: msg.from ? String(msg.from) : null,
      participant: msg.id.participant ? String(msg.id.participant) : null,
      expectedFrom: expectedSender(chat),
      ephemeralDuration: msg.ephemeralDuration || 0,
      chatEphemeralDuration: chat.ephemeralDuration || 0,
      result: content.error || chosen,
    };
    delete record.error;
    const result = record.result;
    // Through a binding, not a routed fetch: Playwright keeps every routed request's
    // objects until the page closes, which grew the server by ~15 KB per message.
    const sent = window.__wakefulSimSent(record).then(() => {
      if (result === "OK") msg.ack = 1;
      return { messageSendResult: result };
    });
    return [Promise.resolve(msg), sent];
  }

  // What WhatsApp defines when: login modules in a few batches, the rest after the sync.
  const LOGIN_MODULES = [
    ["WAWebUpdaterVersion", () => ({ SANITIZED_VERSION_STR: cfg.version })],
    ["WAWebSocketModel", () => ({ Socket })],
    ["WAWebConnModel", () => ({ Conn })],
    ["WAWebCmd", () => ({ Cmd })],
    ["WAWebStreamModel", () => ({ Stream })],
    ["WABase64", () => ({ encodeB64: (value) => String(value) })],
    ["WAWebSignalStoreApi", () => ({
      waSignalStore: { getRegistrationInfo: async () => ({ identityKeyPair: { pubKey: identityKey } }) },
    })],
    ["WAWebUserPrefsInfoStore", () => ({ waNoiseInfo: { get: async () => ({ staticKeyPair: { pubKey: noiseKey } }) } })],
    [cfg.advModule, () => ({ getADVSecretKey: () => advSecret, setADVSignedIdentity: () => undefined })],
    ["WAWebCompanionRegClientUtils", () => ({ DEVICE_PLATFORM: "Chrome" })],
    ["WAWebOfflineHandler", () => ({ OfflineMessageHandler: { getOfflineDeliveryProgress: () => offlineProgress } })],
    ["WAWebAltDeviceLinkingApi", () => ({
      setPairingType: () => undefined,
      initializeAltDeviceLinking: async () => undefined,
      startAltLinkingFlow: async (phone) => {
        if (!/^\d{7,15}$/.test(String(phone))) throw new Error("invalid phone number");
        if (Socket.state !== "UNPAIRED" && Socket.state !== "UNPAIRED_IDLE") {
          throw new Error(`cannot pair in state ${Socket.state}`);
        }
        const letters = "ABCDEFGHJKLMNPQRSTVWXYZ0123456789";
        const code = [...crypto.getRandomValues(new Uint8Array(8))]
          .map((b) => letters[b % letters.length]).join("");
        pairing = { code, issuedAt: Date.now(), phone: String(phone), issued: (pairing?.issued || 0) + 1 };
        render();
        return code;
      },
    })],
  ];
  // Receiving more: what the phone sends besides text ------------------------------------
  // Every stanza passes Msg.processMultipleMessages (read from the collection at each call,
  // as WhatsApp does: a client may wrap it); protocol messages change the original and are
  // not added themselves.
  const history = new Map(); // every message the page has seen (Msg keeps only the latest)
  const remember = (msg) => {
    history.set(String(msg.id), msg);
    if (history.size > 2000) history.delete(history.keys().next().value);
  };
  Msg.on("add", remember);
  Msg.remove = (msg) => {
    Msg._models.delete(String(msg.id));
    Msg.emit("remove", msg);
  };
  Msg.getMessagesById = async (ids) => ({ messages: ids.map((i) => history.get(String(i))).filter(Boolean) });
  Msg.processMultipleMessages = async (_chatId, msgs) => {
    for (const msg of msgs) {
      if (msg.type !== "protocol") {
        Msg.add(msg);
        continue;
      }
      const original = Msg.get(msg.protocolMessageKey) || history.get(String(msg.protocolMessageKey));
      if (!original) continue;
      if (msg.subtype === "message_edit") {
        original.set(original.caption !== undefined ? "caption" : "body", msg.editedBody);
        original.latestEditSenderTimestampMs = msg.t * 1000;
        original.set("latestEditMsgKey", msg.id);
      } else if (["sender_revoke", "admin_revoke"].includes(msg.subtype)) {
        original.body = "";
        original.subtype = msg.subtype;
        original.set("type", "revoked");
      }
      render();
    }
  };
  const senderWid = (from) => {
    const phone = String(from).split("@")[0];
    return cfg.lidContacts && !String(from).includes("@") ? lidWidFor(phone) : wid(String(from).includes("@") ? from : `${phone}@c.us`);
  };
  const findMsg = (id) => {
    const msg = Msg.get(id) || history.get(String(id));
    if (!msg) throw new Error(`no message ${id} on the phone`);
    return msg;
  };
  // A reply names the quoted message by its stanza id and author, as the protocol does.
  const quoteFields = (quotedId) => {
    const quoted = findMsg(quotedId);
    const author = quoted.id.fromMe ? quoted.from : (quoted.author || quoted.from);
    return {
      quotedStanzaID: quoted.id.id,
      quotedParticipant: wid(author),
      quotedMsg: { type: quoted.type, body: quoted.body },
    };
  };
  // What the phone resends once asked (placeholder resend), by message id.
  const awaitingResend = new Map();
  let resendRequests = 0;
  const gating = { isPlaceholderMessageResendEnabled: () => false };
  const reactionRows = [];
  const reactionTable = {
    bulkUpsert: async (rows) => {
      reactionRows.push(...rows);
      if (reactionRows.length > 500) reactionRows.splice(0, reactionRows.length - 500);
    },
  };

  // Media: the file lives encrypted on the media host; WhatsApp Web fetches and decrypts it.
  const MEDIA_HOST = "https://mmg.whatsapp.net";
  const MEDIA_INFO = {
    image: "WhatsApp Image Keys", sticker: "WhatsApp Image Keys", video: "WhatsApp Video Keys",
    audio: "WhatsApp Audio Keys", ptt: "WhatsApp Audio Keys", document: "WhatsApp Document Keys",
  };
  const fromB64 = (b64) => Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const sha256B64 = async (bytes) => btoa(String.fromCharCode(...new Uint8Array(await crypto.subtle.digest("SHA-256", bytes))));
  // What the page downloaded, kept as WhatsApp Web keeps it (its media store): tapping a
  // file and then reading it fetches it once.
  const mediaStore = new Map();
  let mediaStoreBytes = 0;
  const fetchEncrypted = async (directPath) => {
    const stored = mediaStore.get(directPath);
    if (stored) return stored;
    const bytes = await fetchFromHost(directPath);
    mediaStore.set(directPath, bytes);
    mediaStoreBytes += bytes.length;
    while (mediaStoreBytes > 64 * 1024 * 1024 && mediaStore.size > 1) {
      const [oldest, dropped] = mediaStore.entries().next().value;
      mediaStore.delete(oldest);
      mediaStoreBytes -= dropped.length;
    }
    return bytes;
  };
  const fetchFromHost = async (directPath) => {
    const response = await fetch(`${MEDIA_HOST}${directPath}`);
    if (response.status === 404 || response.status === 410) {
      const err = new Error(`media ${response.status}`);
      err.status = 404;
      throw err;
    }
    if (!response.ok) throw new Error(`media host answered ${response.status}`);
    return new Uint8Array(await response.arrayBuffer());
  };
  const downloadAndMaybeDecrypt = async ({ directPath, encFilehash, filehash, mediaKey, type, signal, downloadQpl }) => {
    if (!signal || !downloadQpl || typeof downloadQpl.addPoint !== "function") {
      throw new TypeError("downloadQpl.addPoint is not a function");
    }
    downloadQpl.addPoint("download_start");
    const enc = await fetchEncrypted(directPath);
    if (await sha256B64(enc) !== encFilehash) throw new Error("encrypted file hash mismatch");
    const info = new TextEncoder().encode(MEDIA_INFO[type] || MEDIA_INFO.document);
    const base = await crypto.subtle.importKey("raw", fromB64(mediaKey), "HKDF", false, ["deriveBits"]);
    const keys = new Uint8Array(await crypto.subtle.deriveBits(
      { name: "HKDF", hash: "SHA-256", salt: new Uint8Array(32), info }, base, 112 * 8));
    const iv = keys.slice(0, 16);
    const ciphertext = enc.slice(0, enc.length - 10);
    const macKey = await crypto.subtle.importKey("raw", keys.slice(48, 80), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
    const macInput = new Uint8Array(iv.length + ciphertext.length);
    macInput.set(iv);
    macInput.set(ciphertext, iv.length);
    const mac = new Uint8Array(await crypto.subtle.sign("HMAC", macKey, macInput)).slice(0, 10);
    if (mac.some((b, i) => b !== enc[enc.length - 10 + i])) throw new Error("media MAC mismatch");
    const aes = await crypto.subtle.importKey("raw", keys.slice(16, 48), "AES-CBC", false, ["decrypt"]);
    const plain = await crypto.subtle.decrypt({ name: "AES-CBC", iv }, aes, ciphertext);
    if (await sha256B64(plain) !== filehash) throw new Error("file hash mismatch");
    downloadQpl.addPoint("download_end");
    return plain;
  };
  const THUMBNAIL = "/9j/4AAQSkZJRgABAQAAAQABAAD/2wBDAAMCAgMCAgMDAwMEAwMEBQgFBQQEBQoHBwYIDAoMDAsKCwsNDhIQDQ4RDgsLEBYQERMUFRUVDA8XGBYUGBIUFRT/wAALCAABAAEBAREA/8QAFAABAAAAAAAAAAAAAAAAAAAACf/EABQQAQAAAAAAAAAAAAAAAAAAAAD/2gAIAQEAAD8AKp//2Q==";
  const mediaModel = (fields) => {
    const mediaData = Object.assign(new Model(), { mediaStage: "INIT" });
    return {
      ...fields,
      body: ["image", "video", "sticker"].includes(fields.type) ? THUMBNAIL : "",
      mediaKeyTimestamp: Math.floor(Date.now() / 1000),
      mediaData,
      // What WhatsApp does when a person taps the file: fetch it, note where it stands.
      async downloadMedia({ downloadEvenIfExpensive } = {}) {
        if (!downloadEvenIfExpensive && fields.size > 1024 * 1024) return;
        mediaData.set("mediaStage", "FETCHING");
        try {
          await fetchEncrypted(fields.directPath);
          mediaData.set("mediaStage", "RESOLVED");
        } catch (err) {
          mediaData.set("mediaStage", err.status === 404 ? "ERROR_MISSING" : "ERROR_UNKNOWN");
        }
      },
    };
  };

  const RECEIVE_MODULES = [
    ["WAWebAddonReactionTableMode", () => ({ reactionTableMode: reactionTable })],
    ["WAWebDownloadManager", () => ({ downloadManager: { downloadAndMaybeDecrypt } })],
    ["WAWebSyncGatingUtils", () => gating],
    ["WAWebNonMessageDataRequestPlaceholderMessageResendUtils", () => ({
      handlePlaceholderMsgsSeen: async (msgs) => {
        // WhatsApp's own switch, read from its module at each call.
        if (!load("WAWebSyncGatingUtils").isPlaceholderMessageResendEnabled()) return;
        resendRequests += 1;
        for (const msg of msgs) {
          const pending = awaitingResend.get(String(msg.id));
          if (!pending) continue;
          awaitingResend.delete(String(msg.id));
          setTimeout(() => { msg.body = pending.body; msg.set("type", pending.type); render(); }, 150);
        }
      },
    })],
  ];

  const CHAT_MODULES = [
    ["WAWebCollections", () => ({ Msg, Chat })],
    ["WAWebSendMsgChatAction", () => ({ addAndSendMsgToChat })],
    ["WAWebFindChatAction", () => ({ findOrCreateLatestChat })],
    ["WAWebWidFactory", () => ({
      createWid: (id) => new Wid(String(id)),
      asUserWidOrThrow: (id) => {
        const w = wid(id);
        if (!w.isUser()) throw new Error(`not a user wid: ${w}`);
        return w;
      },
    })],
    ["WAWebMsgKey", () => MsgKey],
    ["WAWebUserPrefsMeUser", () => ({
      getMaybeMePnUser: () => (me ? new Wid(`${me}@c.us`) : null),
      getMaybeMeLidUser: () => (meLid ? new Wid(meLid) : null),
    })],
    ["WAWebGetEphemeralFieldsMsgActionsUtils", () => ({
      getEphemeralFields: (chat) => (chat.ephemeralDuration
        ? { ephemeralDuration: chat.ephemeralDuration, ephemeralSettingTimestamp: 1, disappearingModeInitiator: "chat" }
        : {}),
    })],
    ["WAWebApiContact", () => ({
      getPhoneNumber: (id) => { const pn = phoneOfLid.get(String(id)); return pn ? new Wid(pn) : null; },
      getCurrentLid: (id) => (wid(id).server === "c.us" && cfg.lidContacts ? lidWidFor(wid(id).user) : undefined),
    })],
  ];

  // Contacts and groups: number checks and the groups the account is in ------------------
  // `WAWebQueryExistsJob.queryWidExists(wid)` asks WhatsApp's servers whether a number has
  // an account: the account's wid, or nothing. Checking numbers in bulk gets the device
  // unlinked: more than `existsLimit` checks within `existsWindowMs` and the server logs
  // it out, as WhatsApp does to accounts that check numbers in bulk.
  const registered = new Set((cfg.registered || []).map((p) => String(p).replace(/\D/g, "")));
  const existsQueries = []; // when each check reached the server (ms)
  const groupMetadata = new Collection();
  groupMetadata.refreshes = 0;
  groupMetadata.update = async (id) => {
    requireConnected();
    groupMetadata.refreshes += 1;
    return groupMetadata.get(String(id));
  };
  const unlinkForAbuse = () => {
    setTimeout(async () => {
      await clearLink();
      Cmd.emit(cfg.logoutSignal);
      Socket.set("hasSynced", false);
      setTimeout(() => location.replace("/"), 50);
    }, 0);
  };
  const queryWidExists = async (target) => {
    requireConnected();
    const now = Date.now();
    existsQueries.push(now);
    const recent = existsQueries.filter((at) => now - at < cfg.existsWindowMs).length;
    if (recent > cfg.existsLimit) {
      unlinkForAbuse();
      throw new Error("rate-overlimit");
    }
    await new Promise((r) => setTimeout(r, 30));
    const id = wid(target);
    if (id.server !== "c.us" || !(registered.has(id.user) || id.user === me)) return null;
    if (cfg.lidContacts) lidWidFor(id.user); // the server tells the LID with the answer
    return { wid: new Wid(`${id.user}@c.us`), biz: false };
  };
  // A participant: a phone number (WhatsApp knows the LID and the number), or
  // {phone, hidden: true} (a LID whose number WhatsApp does not tell).
  const participantWid = (entry) => {
    const phone = String(entry.phone || entry).replace(/\D/g, "");
    if (!cfg.lidContacts) return new Wid(`${phone}@c.us`);
    return entry.hidden ? new Wid(`${lidOf(phone)}@lid`) : lidWidFor(phone);
  };
  const addGroup = ({ id, name, participants = [], admins = [], description = "" }) => {
    const gid = wid(id || `1203630${String(Date.now()).slice(-8)}${randomHex(2).replace(/\D/g, "7")}@g.us`);
    const members = new Collection();
    const adminPhones = new Set(admins.map((p) => String(p).replace(/\D/g, "")));
    const self = Object.assign(new Model(), {
      id: cfg.lidContacts ? lidWidFor(me) : new Wid(`${me}@c.us`), isAdmin: true, isSuperAdmin: true,
    });
    members.add(self);
    for (const entry of participants) {
      const phone = String(entry.phone || entry).replace(/\D/g, "");
      const admin = adminPhones.has(phone);
      members.add(Object.assign(new Model(), { id: participantWid(entry), isAdmin: admin, isSuperAdmin: false }));
    }
    const metadata = Object.assign(new Model(), {
      id: gid, subject: name, desc: description, owner: self.id, creation: Math.floor(Date.now() / 1000),
      announce: false, restrict: false, isLidAddressingMode: cfg.lidContacts, participants: members,
    });
    groupMetadata.add(metadata);
    const chat = chatModel(gid);
    chat.name = name;
    chat.groupMetadata = metadata;
    return String(gid);
  };
  CHAT_MODULES.push(["WAWebQueryExistsJob", () => ({
    queryWidExists,
    queryPhoneExists: async (phone) => queryWidExists(new Wid(`${String(phone).replace(/\D/g, "")}@c.us`)),
  })]);
  const collectionsEntry = CHAT_MODULES.find(([name]) => name === "WAWebCollections");
  const baseCollections = collectionsEntry[1];
  collectionsEntry[1] = () => ({ ...baseCollections(), GroupMetadata: groupMetadata });
  const addConfiguredGroups = () => {
    if (addConfiguredGroups.done || !me) return;
    addConfiguredGroups.done = true;
    for (const group of cfg.groups || []) addGroup(group);
  };
  Cmd.on("main_loaded", addConfiguredGroups);

  // Sending more than text -------------------------------------------------------------
  // Media goes as WhatsApp Web sends it: an OpaqueData made from the file, prepared
  // (`prepRawMedia`: type, file hash, a preview; its blob a plain Blob, as WhatsApp's may
  // be), a media object consolidated from it, then the encrypted upload, whose entry gives
  // the message its directPath and mediaKey; a media message without an upload behind it
  // fails. Replies carry the quoted message's context, reactions name a message WhatsApp
  // Web has, chat states and read receipts need the chat's wid and model. The "server"
  // records what arrived, with the uploaded bytes, through `__wakefulSimSent`, and chat
  // states and read receipts through `__wakefulSimPresence`.
  const uploads = new Map(); // directPath -> {bytes (base64), mimetype, filehash}
  const toB64 = (bytes) => {
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) binary += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
    return btoa(binary);
  };

  class OpaqueData {
    constructor(blob, type) { this._blob = blob; this.type = type; this._url = null; }
    static async createFromData(blob, type) {
      if (!(blob instanceof Blob)) throw new TypeError("OpaqueData.createFromData: not a Blob");
      return new OpaqueData(blob, type || blob.type);
    }
    url() { this._url ||= URL.createObjectURL(this._blob); return this._url; }
    autorelease() { /* released when the page goes */ }
    formData() { return this._blob; }
  }
  class MediaData {
    set(values) { Object.assign(this, values); }
    toJSON() { return { ...this }; }
  }
  const mediaTypeOf = (mimetype, params) => {
    if (params.asSticker) {
      if (mimetype !== "image/webp") throw new Error("media-fault: a sticker must be image/webp");
      return "sticker";
    }
    if (params.isPtt) {
      if (!mimetype.startsWith("audio/")) throw new Error("media-fault: a voice note must be audio");
      return "ptt";
    }
    if (params.asDocument) return "document";
    for (const kind of ["image", "video", "audio"]) if (mimetype.startsWith(`${kind}/`)) return kind;
    return "document";
  };
  const prepRawMedia = (opaque, params = {}) => {
    if (!(opaque instanceof OpaqueData)) throw new TypeError("prepRawMedia: expected OpaqueData");
    const prepared = (async () => {
      const bytes = new Uint8Array(await opaque._blob.arrayBuffer());
      const media = new MediaData();
      media.set({
        type: mediaTypeOf(opaque.type, params),
        mimetype: opaque.type,
        size: bytes.length,
        filehash: await sha256B64(bytes),
        filename: opaque._blob.name || undefined,
        isGif: Boolean(params.asGif),
        // WhatsApp hands back a plain Blob: the sender makes its own OpaqueData of it.
        mediaBlob: new Blob([bytes], { type: opaque.type }),
        preview: opaque.type.startsWith("image/") || opaque.type.startsWith("video/") ? "/9j/SIMPREVIEW" : undefined,
      });
      return media;
    })();
    return { waitForPrep: () => prepared };
  };
  const mediaObjects = new Map();
  const getOrCreateMediaObject = (filehash) => {
    if (!mediaObjects.has(filehash)) {
      mediaObjects.set(filehash, {
        filehash, contentInfo: {}, consolidated: null,
        consolidate(json) { this.consolidated = json; this.size = json.size; this.type = json.type; },
      });
    }
    return mediaObjects.get(filehash);
  };
  const uploadMedia = async ({ mimetype, mediaObject, mediaType }) => {
    requireConnected();
    const json = mediaObject && mediaObject.consolidated;
    if (!json || !(json.mediaBlob instanceof OpaqueData)) {
      throw new Error("media-fault: the media object was not consolidated with the file");
    }
    const bytes = new Uint8Array(await json.mediaBlob._blob.arrayBuffer());
    if ((await sha256B64(bytes)) !== mediaObject.filehash) throw new Error("media-fault: file hash mismatch");
    const directPath = `/v/t62.${mediaType}/${randomHex(12)}`;
    uploads.set(directPath, { bytes: toB64(bytes), mimetype, filehash: mediaObject.filehash });
    return {
      mediaEntry: {
        mmsUrl: `https://mmg.whatsapp.net${directPath}`, deprecatedMms3Url: null, directPath,
        mediaKey: randomB64(32), mediaKeyTimestamp: Math.floor(Date.now() / 1000),
        encFilehash: randomB64(32), uploadHash: randomB64(32),
      },
    };
  };

  // A message WhatsApp Web has can be quoted and reacted to.
  const messageMethods = {
    msgContextInfo(chat) {
      return {
        quotedMsg: { type: this.type, body: this.body },
        quotedStanzaID: this.id.id,
        quotedParticipant: this.author || this.from,
        quotedRemoteJid: chat.id,
      };
    },
    canReply() { return this.type !== "revoked"; },
    unsafe() { return this; },
  };
  Msg.on("add", (msg) => {
    for (const [name, fn] of Object.entries(messageMethods)) if (typeof msg[name] !== "function") msg[name] = fn;
    if (msg.id && !msg.id.fromMe && msg.id.remote) {
      const chat = chatModel(msg.id.remote);
      chat.unreadCount = (chat.unreadCount || 0) + 1;
    }
  });
  const findQuoted = (chat, stanzaId) =>
    Msg.getModelsArray().find((m) => m.id.id === stanzaId && String(m.id.remote) === String(chat.id));

  // What a sent message of each type must carry, and what the "server" records of it.
  const MEDIA_TYPES = new Set(["image", "video", "audio", "ptt", "document", "sticker"]);
  const contentRecord = (chat, msg) => {
    const record = { type: msg.type || "chat" };
    if (msg.quotedStanzaID !== undefined) {
      const quoted = findQuoted(chat, msg.quotedStanzaID);
      if (!quoted) throw new Error("the quoted message is not in this chat");
      record.quotedId = String(quoted.id);
      record.quotedParticipant = msg.quotedParticipant ? String(msg.quotedParticipant) : null;
    }
    if (MEDIA_TYPES.has(record.type)) {
      const upload = uploads.get(msg.directPath);
      if (!upload || !msg.mediaKey || upload.filehash !== msg.filehash) return { ...record, error: "ERROR_UNKNOWN" };
      Object.assign(record, {
        caption: msg.caption ?? null, filename: msg.filename ?? null, mimetype: upload.mimetype,
        size: msg.size, data: upload.bytes,
      });
    } else if (record.type === "location") {
      if (typeof msg.lat !== "number" || typeof msg.lng !== "number") throw new Error("a location needs lat and lng");
      Object.assign(record, { lat: msg.lat, lng: msg.lng, loc: msg.loc ?? null });
    } else if (record.type === "vcard") {
      if (!/^BEGIN:VCARD/.test(msg.body || "")) throw new Error("a vcard message needs a vCard body");
      Object.assign(record, { vcard: msg.body, vcardName: msg.vcardFormattedName ?? null });
    }
    return record;
  };

  const sendReactionToMsg = async (msg, reaction) => {
    requireConnected();
    if (!msg || !Msg.get(String(msg.id))) throw new Error("sendReactionToMsg: not a message of this client");
    const result = sendResults.get(String(msg.id.remote)) || "OK";
    await window.__wakefulSimSent({
      id: `reaction_${String(msg.id)}`, to: String(msg.id.remote), body: reaction, t: Math.floor(Date.now() / 1000),
      type: "reaction", reactedTo: String(msg.id), emoji: reaction, result,
    });
    return { messageSendResult: result };
  };

  const chatState = (state) => async (id) => {
    requireConnected();
    if (!(id instanceof Wid)) throw new TypeError("chat state: expected a Wid");
    await window.__wakefulSimPresence({ chat: String(id), state });
  };
  const sendSeen = async ({ chat }) => {
    requireConnected();
    if (!(chat instanceof ChatModel)) throw new TypeError("sendSeen: expected a chat model");
    const unread = chat.unreadCount || 0;
    chat.unreadCount = 0;
    await window.__wakefulSimPresence({ chat: String(chat.id), state: "read", unread });
  };

  const SEND_MODULES = [
    ["WAWebMediaOpaqueData", () => OpaqueData],
    ["WAWebPrepRawMedia", () => ({ prepRawMedia })],
    ["WAWebMediaStorage", () => ({ getOrCreateMediaObject })],
    ["WAWebMmsMediaTypes", () => ({ msgToMediaType: ({ type }) => type, castToV4: (t) => t })],
    ["WAWebMediaMmsV4Upload", () => ({ uploadMedia, uploadUnencryptedMedia: uploadMedia })],
    ["WAWebSendReactionMsgAction", () => ({ sendReactionToMsg })],
    ["WAWebChatStateBridge", () => ({
      sendChatStateComposing: chatState("typing"),
      sendChatStateRecording: chatState("recording"),
      sendChatStatePaused: chatState("paused"),
    })],
    ["WAWebUpdateUnreadChatAction", () => ({ sendSeen })],
    ["WAWebMsgReply", () => ({ canReplyMsg: (msg) => msg.type !== "revoked" })],
  ];
  const withheld = new Set(cfg.withhold);
  CHAT_MODULES.push(...RECEIVE_MODULES);
  const define = (batch, done) => {
    const queue = batch.filter(([name]) => !withheld.has(name));
    const step = () => {
      for (const [name, factory] of queue.splice(0, 3)) window.__d(name, [], factory);
      if (queue.length) setTimeout(step, cfg.moduleEvery);
      else if (done) done();
    };
    step();
  };
  let chatDefined = false;
  const defineChatModules = () => {
    if (chatDefined) return;
    chatDefined = true;
    define([...CHAT_MODULES, ...SEND_MODULES], () => {
      if (cfg.debug === "late") window.Debug = { VERSION: cfg.version };
      Cmd.isMainLoaded = true;
      Cmd.emit("main_loaded");
    });
  };
  const bootLoader = () => {
    window.__d = (name, _deps, factory) => { registry[name] = { factory }; };
    window.ErrorGuard = { skipGuardGlobal: (value) => { skipGuard = Boolean(value); } };
    window.importNamespace = (name) => load(name);
    window.require = (name) => (name === "__debug" ? { modulesMap: registry } : load(name));
    define(LOGIN_MODULES);
  };
  if (cfg.debug === "early") window.Debug = { VERSION: cfg.version };

  // Linking and the first sync ---------------------------------------------------------
  const finishSync = () => {
    offlineProgress = 100;
    Socket.set("hasSynced", true);
    Stream.set("mode", "MAIN");
    defineChatModules();
    render();
  };
  const connect = async (phone, syncMs) => {
    me = phone;
    meLid = `${lidOf(phone)}@lid`;
    Conn.set("wid", new Wid(`${phone}@c.us`));
    Stream.set("mode", "SYNCING");
    Socket.set("state", "OPENING");
    await new Promise((r) => setTimeout(r, 150));
    Socket.set("state", "CONNECTED");
    // The history sync reports its progress as it goes; chats are usable once it ends.
    const started = Date.now();
    offlineProgress = 0;
    const tick = () => {
      if (Socket.state !== "CONNECTED") return;
      const elapsed = Date.now() - started;
      if (elapsed >= syncMs) { finishSync(); return; }
      const percent = Math.min(99, Math.floor((elapsed / syncMs) * 100));
      if (percent !== offlineProgress) {
        offlineProgress = percent;
        Cmd.emit("offline_progress_update_from_bridge");
        render();
      }
      setTimeout(tick, Math.max(50, Math.min(1000, syncMs / 10)));
    };
    tick();
  };
  const link = async (phone) => {
    stopQr();
    pairing = null;
    Socket.set("state", "PAIRING");
    Conn.set("ref", null);
    await saveLink(phone);
    await connect(phone, cfg.syncMs);
  };

  Socket.logout = async () => {
    await clearLink();
    Cmd.emit("logout");
    Socket.set("hasSynced", false);
    Socket.set("state", "UNPAIRED");
    setTimeout(() => location.replace("/"), 50);
  };

  // The phone, and WhatsApp's servers, as the Python Simulator drives them.
  window.__waSim = {
    status: () => ({
      state: Socket.state,
      streamMode: Stream.mode,
      ref: Conn.ref,
      pairingCode: pairing ? pairing.code : null,
      pairingCodesIssued: pairing ? pairing.issued : 0,
      me,
      lid: meLid,
      sentSeen: sentCount,
      syncProgress: offlineProgress,
      modules: Object.keys(registry).length,
      debug: Boolean(window.Debug && window.Debug.VERSION),
      advSecret,
      noiseKey,
      identityKey,
    }),
    lidOf: (phone) => `${lidOf(phone)}@lid`,
    scan: async (phone) => {
      if (!Conn.ref) throw new Error(`no QR code is showing (state ${Socket.state})`);
      const scanned = Conn.ref;
      await link(phone);
      return scanned;
    },
    enterCode: async (code, phone) => {
      if (!pairing) throw new Error("no pairing code was requested");
      if (String(code).toUpperCase() !== pairing.code) throw new Error("wrong pairing code");
      if (Date.now() - pairing.issuedAt > cfg.pairCodeTtl) throw new Error("the pairing code expired");
      await link(phone);
    },
    // One message from the phone's side. `kind`: chat, status, gp2, notification_template,
    // e2e_notification, revoked; `group`: the group it was written in; `encrypted`: it
    // arrives undecrypted first (and becomes `kind` once decrypted).
    incoming: ({ from, body, encrypted, kind = "chat", group = null, quote = null, undecryptable = false }) => {
      requireConnected();
      const phone = String(from).split("@")[0];
      const sender = cfg.lidContacts && !String(from).includes("@") ? lidWidFor(phone) : wid(String(from).includes("@") ? from : `${phone}@c.us`);
      let chatId = group ? wid(group) : sender;
      let author;
      if (kind === "status") chatId = new Wid("status@broadcast");
      if (group || kind === "status") author = sender;
      const id = new MsgKey({ from: chatId, to: Conn.wid, id: "SIM" + randomHex(8), fromMe: false, participant: author });
      const finalType = kind === "chat" || kind === "status" ? "chat" : kind;
      const msg = Object.assign(new Model(), {
        id, from: chatId, to: Conn.wid, author, body: encrypted ? "" : body,
        t: Math.floor(Date.now() / 1000), type: encrypted ? "ciphertext" : finalType, isNewMsg: true,
        subtype: kind === "gp2" ? "add" : undefined,
      });
      if (group) chatModel(chatId);
      if (quote) Object.assign(msg, quoteFields(quote));
      if (undecryptable) {
        msg.type = "ciphertext";
        msg.body = "";
        awaitingResend.set(String(id), { body, type: finalType });
      }
      Msg.processMultipleMessages(chatId, [msg]);
      if (encrypted && !undecryptable) {
        setTimeout(() => { msg.body = finalType === "revoked" ? "" : body; msg.set("type", finalType); render(); }, 200);
      }
      return String(id);
    },
    setSendResult: (recipient, result) => {
      const key = recipient.includes("@") ? recipient : `${recipient}@c.us`;
      if (result === null) sendResults.delete(key); else sendResults.set(key, result);
    },
    setDisappearing: (id, seconds) => {
      const target = cfg.lidContacts && !id.includes("@") ? lidWidFor(id) : wid(id.includes("@") ? id : `${id}@c.us`);
      chatModel(target).ephemeralDuration = seconds;
      return String(target);
    },
    setStreamMode: (mode) => Stream.set("mode", mode),
    // The phone unlinks this device: the page hears it from the server, after this call
    // has returned (the bot closes its browser as soon as it hears of it).
    phoneLogout: () => {
      setTimeout(async () => {
        await clearLink();
        Cmd.emit(cfg.logoutSignal);
        Socket.set("hasSynced", false);
        setTimeout(() => location.replace("/"), 50);
      }, 0);
      return true;
    },
    conflict: () => Socket.set("state", "CONFLICT"),
    drop: () => {
      dropped = true;
      Socket.set("state", "TIMEOUT");
    },
  };

  // Contacts and groups, as the phone and the servers drive them.
  Object.assign(window.__waSim, {
    setRegistered: (phones) => {
      registered.clear();
      for (const p of phones) registered.add(String(p).replace(/\D/g, ""));
    },
    existsQueries: () => existsQueries.length,
    addGroup: (group) => {
      requireConnected();
      return addGroup(group);
    },
    groupRefreshes: () => groupMetadata.refreshes,
  });

  // The phone's side of replies, reactions, edits, revokes, media and group changes.
  Object.assign(window.__waSim, {
    react: ({ from, messageId, text }) => {
      requireConnected();
      const parent = findMsg(messageId);
      const sender = senderWid(from);
      const chatId = parent.id.remote;
      const inGroup = chatId.isGroup();
      const id = new MsgKey({ from: chatId, to: Conn.wid, id: "SIMR" + randomHex(8), fromMe: false, participant: inGroup ? sender : undefined });
      const row = {
        id, reactionParentKey: parent.id, reactionText: text, reactionTimestamp: Date.now(),
        from: inGroup ? chatId : sender, author: inGroup ? sender : undefined, orphan: 0, read: false,
      };
      // As WhatsApp does: through the module, so whoever wrapped it hears of it.
      load("WAWebAddonReactionTableMode").reactionTableMode.bulkUpsert([row]);
      return String(id);
    },
    edit: ({ messageId, body }) => {
      requireConnected();
      const original = findMsg(messageId);
      const chatId = original.id.remote;
      const id = new MsgKey({ from: chatId, to: Conn.wid, id: "SIME" + randomHex(8), fromMe: false, participant: original.author });
      Msg.processMultipleMessages(chatId, [{
        id, type: "protocol", subtype: "message_edit", isNewMsg: true, protocolMessageKey: original.id,
        editedBody: body, from: chatId, author: original.author, t: Math.floor(Date.now() / 1000),
      }]);
      return String(id);
    },
    // `admin`: a group admin (a phone number) deletes it; `unloaded`: the page no longer
    // holds the original in its chat store (only the protocol message says what went).
    revoke: ({ messageId, admin = null, unloaded = false }) => {
      requireConnected();
      const original = findMsg(messageId);
      const chatId = original.id.remote;
      const by = admin ? senderWid(admin) : (original.author || original.from);
      if (unloaded) {
        Msg.remove(original);
        history.delete(String(original.id));
      }
      const id = new MsgKey({ from: chatId, to: Conn.wid, id: "SIMX" + randomHex(8), fromMe: false, participant: chatId.isGroup() ? by : undefined });
      Msg.processMultipleMessages(chatId, [{
        id, type: "protocol", subtype: admin ? "admin_revoke" : "sender_revoke", isNewMsg: true,
        protocolMessageKey: original.id, from: chatId.isGroup() ? chatId : by,
        author: chatId.isGroup() ? by : undefined, t: Math.floor(Date.now() / 1000),
      }]);
      return String(id);
    },
    incomingMedia: ({ from, kind, group = null, quote = null, ...file }) => {
      requireConnected();
      const sender = senderWid(from);
      const chatId = group ? wid(group) : sender;
      const id = new MsgKey({ from: chatId, to: Conn.wid, id: "SIMM" + randomHex(8), fromMe: false, participant: group ? sender : undefined });
      const msg = Object.assign(new Model(), mediaModel({ type: kind, ...file }), {
        id, from: chatId, to: Conn.wid, author: group ? sender : undefined,
        t: Math.floor(Date.now() / 1000), isNewMsg: true,
      });
      if (quote) Object.assign(msg, quoteFields(quote));
      if (group) chatModel(chatId);
      Msg.processMultipleMessages(chatId, [msg]);
      return String(id);
    },
    groupEvent: ({ group, subtype, author = null, participants = [] }) => {
      requireConnected();
      const chatId = wid(group);
      chatModel(chatId);
      const by = author ? senderWid(author) : undefined;
      const id = new MsgKey({ from: chatId, to: Conn.wid, id: "SIMG" + randomHex(8), fromMe: false, participant: by });
      Msg.processMultipleMessages(chatId, [Object.assign(new Model(), {
        id, type: "gp2", subtype, from: chatId, to: Conn.wid, author: by, body: "",
        recipients: participants.map(senderWid), t: Math.floor(Date.now() / 1000), isNewMsg: true,
      })]);
      return String(id);
    },
    receiving: () => ({
      resendRequests,
      awaitingResend: awaitingResend.size,
      reactions: reactionRows.length,
    }),
  });

  // One connection per linked device ----------------------------------------------------
  // WhatsApp's servers know which browser holds each linked device (the Python Simulator
  // keeps that record in a folder the processes share, see links.py). A page that connects
  // as a device another live browser holds takes it, and the older page gets the `conflict`
  // stream error: its Socket state becomes CONFLICT, as on the real service, which it hears
  // at its next beat. `Socket.takeover()` (whatsapp-web.js's takeoverOnConflict) takes the
  // link back, and the other browser gets the conflict in turn.
  const LINK_BEAT_MS = 1000;
  const linkHold = { secret: null, beat: null, opening: false };
  const askLinkServer = (op) => (typeof window.__wakefulSimLink === "function"
    ? window.__wakefulSimLink({ op, secret: linkHold.secret })
    : Promise.resolve({ held: true }));
  const holdLink = async (op) => {
    // The device is the link's own keys, as stored in the profile (a copy holds the same).
    const keys = await dbRequest("readonly", (s) => s.get("keys"));
    if (!keys || !keys.advSecret) return;
    linkHold.secret = `${keys.me}:${keys.advSecret}`;
    await askLinkServer(op);
    clearInterval(linkHold.beat);
    linkHold.beat = setInterval(async () => {
      const answer = await askLinkServer("beat").catch(() => null);
      if (answer && answer.held === false && linkHold.beat) {
        clearInterval(linkHold.beat);
        linkHold.beat = null;
        Socket.set("state", "CONFLICT");
      }
    }, LINK_BEAT_MS);
  };
  Socket.on("change:state", (_model, state) => {
    if (state !== "CONNECTED" || linkHold.beat || linkHold.opening) return;
    linkHold.opening = true;
    holdLink("open")
      .catch((err) => console.warn("simulator: link record", err))
      .finally(() => { linkHold.opening = false; });
  });
  Socket.takeover = async () => {
    if (Socket.state !== "CONFLICT") return;
    linkHold.opening = true;
    try {
      Socket.set("state", "OPENING");
      await holdLink("takeover");
    } finally {
      linkHold.opening = false;
    }
    Socket.set("state", "CONNECTED");
  };

  setTimeout(bootLoader, cfg.loaderDelay);
  (async () => {
    render();
    const phone = await loadLink();
    if (phone) {
      await connect(phone, cfg.resyncMs);
    } else {
      startQr();
    }
  })();
})();
