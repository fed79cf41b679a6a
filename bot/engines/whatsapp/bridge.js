// The only code in wakeful that knows WhatsApp Web.
//
// Added to every page of a bot's browser before WhatsApp's own scripts run. It waits for
// WhatsApp's module loader (`__d` and `require` assigned; `window.Debug` is set late or
// never, so it is not waited for), lets the module list settle, and reads the same internal
// modules the maintained open-source clients read: by name, and by shape where a module
// moves between releases. What happens is reported through one exposed binding,
// `__wakefulEmit(kind, data)`, as normalised events:
//   qr {qr} · pair_code {code} · authenticated {fresh} · sync {percent}
//   · ready {me, wid, lid, version}
//   · message {id, chat, from, phone, lid, isGroup, author, type, body, timestamp,
//              quotedMessageId, media}
//   · reaction {id, messageId, chat, from, phone, lid, reaction, removed, timestamp}
//   · edited {id, chat, from, phone, lid, body, previousBody, timestamp}
//   · revoked {id, chat, from, phone, lid, by, timestamp}
//   · group {chat, action, subtype, author, participants, timestamp}
//   · state {state} · logout {reason} · bridge_outdated {missing, stage, version}
// When a module it needs does not appear while the module list grows, and then for a bound
// of quiet, it says so (`bridge_outdated`, naming the module) instead of limping on.
// The driver calls back into `window.__wakefulBridge` (state, sendText, sendContent,
// presence, requestPairCode, logout, downloadMedia). Timings come from `window.__wakefulConfig`, set by the driver just before.
(() => {
  "use strict";
  if (window.__wakefulBridge) return;
  const config = {
    quietMs: 750, // the module list has stopped growing for this long: try to attach
    giveUpMs: 60000, // no new module for this long and one is still missing: outdated
    pairRefreshMs: 180000, // a pairing code is replaced this often (it lives ~3.25 min)
    pairRefreshes: 5, // then the QR takes over again
    resendMs: 5000, // undecryptable messages are batched this long before the phone is asked
    maxDownloadBytes: 16 * 1024 * 1024, // a larger file is not fetched (MEDIA_DOWNLOAD_MAX_MB)
    ...(window.__wakefulConfig || {}),
  };

  const pending = [];
  const emit = (kind, data = {}) => {
    pending.push([kind, data]);
    flush();
  };
  const flush = () => {
    if (typeof window.__wakefulEmit !== "function") return;
    while (pending.length) {
      const [kind, data] = pending.shift();
      window.__wakefulEmit(kind, data).catch(() => undefined);
    }
  };
  const text = (value) => (value === null || value === undefined ? "" : String(value));

  // Modules -----------------------------------------------------------------------------

  const loaderUp = () => typeof window.__d === "function" && typeof window.require === "function";
  const moduleNames = () => {
    try {
      return Object.keys(window.require("__debug").modulesMap || {});
    } catch (_) {
      return [];
    }
  };
  // WhatsApp's error guard reports every failed require to its servers: skip it for ours.
  const load = (name) => {
    const guard = window.ErrorGuard;
    try { guard?.skipGuardGlobal?.(true); } catch (_) { /* no guard in this build */ }
    try {
      if (typeof window.importNamespace === "function") return window.importNamespace(name);
      return window.require(name);
    } catch (_) {
      return null;
    } finally {
      try { guard?.skipGuardGlobal?.(false); } catch (_) { /* as above */ }
    }
  };
  // A spec names where a value usually lives and how to pick it out of a module; with
  // `shape`, any WhatsApp module the picker accepts will do (the module was renamed).
  const resolveOne = (spec) => {
    for (const name of spec.names) {
      const module = load(name);
      const value = module && spec.pick(module);
      if (value) return value;
    }
    if (!spec.shape) return null;
    for (const name of moduleNames()) {
      if (!/^WA/.test(name) || spec.names.includes(name)) continue;
      const module = load(name);
      const value = module && spec.pick(module);
      if (value) return value;
    }
    return null;
  };
  const resolveAll = (specs) => {
    const found = {};
    const missing = [];
    for (const [key, spec] of Object.entries(specs)) {
      const value = resolveOne(spec);
      if (value) found[key] = value;
      else if (!spec.optional) missing.push(spec.names[0]);
    }
    return { found, missing };
  };
  const has = (fn) => (m) => (typeof m[fn] === "function" ? m : null);

  const LOGIN = {
    Socket: { names: ["WAWebSocketModel"], pick: (m) => m.Socket },
    Conn: { names: ["WAWebConnModel"], pick: (m) => m.Conn },
    Cmd: { names: ["WAWebCmd"], pick: (m) => m.Cmd },
    B64: { names: ["WABase64"], pick: has("encodeB64") },
    SignalStore: { names: ["WAWebSignalStoreApi"], pick: (m) => m.waSignalStore },
    NoiseInfo: { names: ["WAWebUserPrefsInfoStore"], pick: (m) => m.waNoiseInfo },
    // The ADV secret moved in 2026-03; wa-js finds it by shape.
    Adv: { names: ["WAWebUserPrefsMultiDevice", "WAWebAdvSignatureApi"], pick: has("getADVSecretKey"), shape: true },
    RegUtils: { names: ["WAWebCompanionRegClientUtils"], pick: (m) => (m.DEVICE_PLATFORM ? m : null) },
    Stream: { names: ["WAWebStreamModel"], pick: (m) => m.Stream, optional: true },
    Offline: { names: ["WAWebOfflineHandler"], pick: (m) => m.OfflineMessageHandler, optional: true },
    AltLinking: { names: ["WAWebAltDeviceLinkingApi"], pick: has("startAltLinkingFlow"), optional: true },
  };
  const CHAT = {
    Collections: { names: ["WAWebCollections"], pick: (m) => (m.Msg && m.Chat ? m : null) },
    SendMsg: { names: ["WAWebSendMsgChatAction"], pick: has("addAndSendMsgToChat"), shape: true },
    FindChat: { names: ["WAWebFindChatAction"], pick: has("findOrCreateLatestChat"), shape: true },
    WidFactory: { names: ["WAWebWidFactory"], pick: has("createWid") },
    MsgKey: { names: ["WAWebMsgKey"], pick: (m) => (typeof m === "function" && m.newId ? m : m.default) },
    MeUser: { names: ["WAWebUserPrefsMeUser"], pick: has("getMaybeMePnUser") },
    Ephemeral: {
      names: ["WAWebGetEphemeralFieldsMsgActionsUtils"], pick: has("getEphemeralFields"), shape: true,
    },
    Contact: { names: ["WAWebApiContact"], pick: has("getPhoneNumber"), optional: true },
    // Receiving more than text (see "Receiving more" below); each one optional: without it
    // that one event is missing, the rest works.
    Reactions: {
      names: ["WAWebAddonReactionTableMode"],
      pick: (m) => (m.reactionTableMode && typeof m.reactionTableMode.bulkUpsert === "function" ? m : null),
      optional: true,
    },
    Download: {
      names: ["WAWebDownloadManager"],
      pick: (m) => (m.downloadManager && typeof m.downloadManager.downloadAndMaybeDecrypt === "function" ? m : null),
      optional: true,
    },
    Gating: { names: ["WAWebSyncGatingUtils"], pick: (m) => ("isPlaceholderMessageResendEnabled" in m ? m : null), optional: true },
    Resend: {
      names: ["WAWebNonMessageDataRequestPlaceholderMessageResendUtils"], pick: has("handlePlaceholderMsgsSeen"), optional: true,
    },
  };

  const version = () => {
    const updater = load("WAWebUpdaterVersion");
    return text((updater && updater.SANITIZED_VERSION_STR) || (window.Debug && window.Debug.VERSION)) || null;
  };

  let outdated = false;
  const giveUp = (stage, missing) => {
    if (outdated) return;
    outdated = true;
    emit("bridge_outdated", { stage, missing: missing.join(", "), version: version() });
  };

  // Wait until the module list stops growing, then resolve `specs`; try again each time
  // it grows; give up once it has not grown for `giveUpMs` with something still missing.
  const whenModules = (stage, specs, onFound) => {
    const started = Date.now();
    let count = -1;
    let changedAt = Date.now();
    let triedAt = -1;
    let triedWhen = 0;
    let missing = ["the module loader (__d / require)"];
    const timer = setInterval(() => {
      flush();
      if (outdated) { clearInterval(timer); return; }
      if (!loaderUp()) {
        if (Date.now() - started >= config.giveUpMs) {
          clearInterval(timer);
          giveUp(stage, missing);
        }
        return;
      }
      const now = moduleNames().length;
      if (now !== count) {
        count = now;
        changedAt = Date.now();
        return;
      }
      const quiet = Date.now() - changedAt;
      if (quiet < config.quietMs) return;
      // A build without the `__debug` module list (count 0) is retried every quiet period.
      const retry = triedAt !== count || (count === 0 && Date.now() - triedWhen >= config.quietMs);
      if (retry) {
        triedAt = count;
        triedWhen = Date.now();
        const result = resolveAll(specs);
        if (!result.missing.length) {
          clearInterval(timer);
          onFound(result.found);
          return;
        }
        missing = result.missing;
      }
      if (quiet >= config.giveUpMs) {
        clearInterval(timer);
        giveUp(stage, missing);
      }
    }, 100);
  };

  // Linking -----------------------------------------------------------------------------

  let auth = null;
  let chat = null;
  let sawUnpaired = false;
  let authenticated = false;
  let readySent = false;
  let lastQr = null;
  let lastPercent = null;
  const pairing = { active: false, phone: null, refreshes: 0, timer: null };

  const UNPAIRED = new Set(["UNPAIRED", "UNPAIRED_IDLE"]);
  const LINKING = new Set(["PAIRING", "OPENING", "CONNECTED"]);
  // Stream modes that stop the session; the Socket states say the rest.
  const BLOCKING_MODES = new Set(["CONFLICT", "PROXYBLOCK", "TOS_BLOCK", "SMB_TOS_BLOCK", "DEPRECATED_VERSION"]);
  // Not conversation: status updates, group and system notifications, deletions.
  const NOT_MESSAGES = new Set([
    "gp2", "notification", "notification_template", "e2e_notification", "protocol", "revoked",
    "call_log", "broadcast_notification", "ciphertext",
  ]);

  // The QR encodes ref, noise key, identity key, ADV secret and platform: a phone refuses a
  // QR with any of them missing, so a part that cannot be read is an outdated bridge.
  const qrPayload = async (ref) => {
    const m = auth;
    const registration = await m.SignalStore.getRegistrationInfo();
    const noise = await m.NoiseInfo.get();
    const parts = {
      ref,
      "noise key": noise && noise.staticKeyPair && m.B64.encodeB64(noise.staticKeyPair.pubKey),
      "identity key": registration && registration.identityKeyPair
        && m.B64.encodeB64(registration.identityKeyPair.pubKey),
      "ADV secret": await Promise.resolve(m.Adv.getADVSecretKey()),
      platform: m.RegUtils.DEVICE_PLATFORM,
    };
    const empty = Object.keys(parts).filter((k) => !parts[k]);
    if (empty.length) {
      giveUp("qr", empty.map((k) => `the QR code's ${k}`));
      return null;
    }
    return Object.values(parts).join(",");
  };

  const reportQr = async (ref) => {
    if (!ref || ref === lastQr || authenticated || outdated) return;
    lastQr = ref;
    try {
      const qr = await qrPayload(ref);
      if (qr) emit("qr", { qr });
    } catch (err) {
      giveUp("qr", [`the QR code's keys (${err && err.message})`]);
    }
  };

  const stopPairing = () => {
    clearTimeout(pairing.timer);
    pairing.timer = null;
    pairing.active = false;
  };

  const reportAuthenticated = () => {
    if (authenticated) return;
    authenticated = true;
    stopPairing();
    // fresh: linked by a scan or a code on this page (not a link restored from the profile).
    emit("authenticated", { fresh: sawUnpaired });
  };

  const reportSync = () => {
    if (!auth || !auth.Offline) return;
    let percent;
    try {
      percent = Number(auth.Offline.getOfflineDeliveryProgress());
    } catch (_) {
      return;
    }
    if (!Number.isFinite(percent) || percent === lastPercent) return;
    lastPercent = percent;
    reportAuthenticated();
    emit("sync", { percent: Math.max(0, Math.min(100, Math.round(percent))) });
  };

  const widText = (value) => (value ? text(value.toString ? value.toString() : value) : "");
  const meUser = () => {
    const pn = chat.MeUser.getMaybeMePnUser?.();
    const lid = chat.MeUser.getMaybeMeLidUser?.();
    const main = pn || lid;
    return {
      me: main ? `+${main.user}` : null,
      wid: widText(main) || null,
      lid: widText(lid) || null,
      version: version(),
    };
  };

  const reportReady = () => {
    if (readySent) return;
    readySent = true;
    reportAuthenticated();
    emit("ready", meUser());
  };

  // Who wrote a message: the phone number when WhatsApp knows it, the LID beside it.
  const identify = (id) => {
    const serialized = widText(id);
    const lidServer = serialized.endsWith("@lid");
    let phone = lidServer ? null : serialized;
    let lid = lidServer ? serialized : null;
    const contact = chat && chat.Contact;
    try {
      if (lidServer && contact) phone = widText(contact.getPhoneNumber(id)) || null;
      if (!lidServer && contact && contact.getCurrentLid) lid = widText(contact.getCurrentLid(id)) || null;
    } catch (_) { /* unknown contact: the id we have is what we report */ }
    return {
      from: phone || serialized,
      phone: phone ? `+${phone.split("@")[0]}` : null,
      lid,
    };
  };

  const onMessage = (msg) => {
    if (!msg || !msg.isNewMsg || (msg.id && msg.id.fromMe)) return;
    // Not decrypted yet: WhatsApp changes its type once it is (or to "revoked"); one it
    // cannot decrypt is asked of the phone again (a placeholder resend).
    if (msg.type === "ciphertext" && typeof msg.on === "function") {
      const decrypted = () => {
        msg.off?.("change:type", decrypted);
        onMessage(msg);
      };
      msg.on("change:type", decrypted);
      askPhoneToResend(msg);
      return;
    }
    const chatId = widText((msg.id && msg.id.remote) || msg.from);
    if (chatId === "status@broadcast" || msg.isStatusV3 || chatId.endsWith("@broadcast")) return;
    if (msg.type === "gp2") {
      reportGroupNotification(msg, chatId);
      return;
    }
    if (NOT_MESSAGES.has(msg.type)) return;
    const isGroup = chatId.endsWith("@g.us");
    const sender = isGroup ? (msg.author || (msg.id && msg.id.participant)) : msg.from;
    const who = identify(sender);
    emit("message", {
      id: widText(msg.id),
      chat: chatId,
      from: who.from,
      phone: who.phone,
      lid: who.lid,
      isGroup,
      author: isGroup ? who.from : null,
      type: msg.type || "chat",
      ...received(msg),
      timestamp: msg.t || Math.floor(Date.now() / 1000),
    });
  };

  // Receiving more: replies, media, reactions, edits, revokes, group notifications ------

  const MEDIA_TYPES = new Set(["image", "video", "audio", "ptt", "document", "sticker"]);
  const lastBodies = new WeakMap(); // message -> the text last reported (for edits)
  const textOf = (msg) => {
    // A media message's `body` is its thumbnail (base64); what a person wrote is the caption.
    const value = MEDIA_TYPES.has(msg.type) ? msg.caption : msg.body;
    return typeof value === "string" ? value : "";
  };
  const isMe = (id) => {
    const me = chat && chat.MeUser;
    const serialized = widText(id);
    if (!me || !serialized) return false;
    return [me.getMaybeMePnUser?.(), me.getMaybeMeLidUser?.()].some((w) => w && widText(w) === serialized);
  };
  // The quoted message's key, built as WhatsApp serializes keys (fromMe_remote_id[_participant]).
  const quotedKey = (msg) => {
    if (!msg.quotedStanzaID) return null;
    const remote = widText(msg.quotedRemoteJid || (msg.id && msg.id.remote) || msg.from);
    const fromMe = isMe(msg.quotedParticipant);
    const inGroup = remote.endsWith("@g.us") || remote === "status@broadcast";
    const participant = inGroup && msg.quotedParticipant ? `_${widText(msg.quotedParticipant)}` : "";
    return `${fromMe}_${remote}_${msg.quotedStanzaID}${participant}`;
  };
  const received = (msg) => {
    const body = textOf(msg);
    lastBodies.set(msg, body);
    const media = MEDIA_TYPES.has(msg.type) && (msg.directPath || msg.mediaData)
      ? {
        mimetype: text(msg.mimetype) || null,
        size: Number.isFinite(Number(msg.size)) ? Number(msg.size) : null,
        filename: text(msg.filename) || null,
        caption: typeof msg.caption === "string" ? msg.caption : null,
      }
      : null;
    return { body, quotedMessageId: quotedKey(msg), media };
  };
  const senderOf = (msg) => {
    const chatId = widText((msg.id && msg.id.remote) || msg.from);
    const sender = chatId.endsWith("@g.us") ? (msg.author || (msg.id && msg.id.participant)) : msg.from;
    return { chatId, who: identify(sender) };
  };

  // Bounded memory of what was reported, so the two ways a revoke is seen report it once.
  const reportedRevokes = new Set();
  const reportRevoke = (key, sender, subtype, t) => {
    const id = widText(key);
    if (!id || reportedRevokes.has(id)) return;
    reportedRevokes.add(id);
    if (reportedRevokes.size > 500) reportedRevokes.delete(reportedRevokes.values().next().value);
    const chatId = widText(key.remote) || id.split("_")[1] || "";
    const who = identify(sender);
    emit("revoked", {
      id, chat: chatId, from: who.from, phone: who.phone, lid: who.lid,
      by: subtype === "admin_revoke" ? "admin" : "sender",
      timestamp: t || Math.floor(Date.now() / 1000),
    });
  };
  const REVOKES = new Set(["revoke", "sender_revoke", "admin_revoke"]);
  // wa-js: every stanza passes Msg.processMultipleMessages before the chat store, and a
  // revoke is a `protocol` message naming the revoked key (the message may not be loaded).
  const watchProtocolMessages = (Msg) => {
    const original = Msg.processMultipleMessages;
    if (typeof original !== "function" || original.__wakeful) return;
    const wrapped = function (chatId, msgs, ...rest) {
      try {
        for (const raw of msgs || []) {
          if (!raw || !raw.isNewMsg || raw.type !== "protocol" || !REVOKES.has(raw.subtype)) continue;
          if (!raw.protocolMessageKey || raw.protocolMessageKey.fromMe) continue;
          const sender = raw.author || raw.from;
          reportRevoke(raw.protocolMessageKey, sender, raw.subtype, raw.t);
        }
      } catch (_) { /* never in WhatsApp's way */ }
      return original.call(this, chatId, msgs, ...rest);
    };
    wrapped.__wakeful = true;
    Msg.processMultipleMessages = wrapped;
  };
  // wwebjs: a loaded message turns `revoked` in place.
  const onTypeChange = (msg) => {
    if (!msg || msg.type !== "revoked" || (msg.id && msg.id.fromMe)) return;
    const inGroup = widText((msg.id && msg.id.remote) || "").endsWith("@g.us");
    reportRevoke(msg.id, inGroup ? (msg.author || msg.id.participant) : msg.from, msg.subtype, null);
  };

  const onEdit = (msg) => {
    if (!msg || (msg.id && msg.id.fromMe) || msg.type === "revoked") return;
    // The new text is set with the key or just after it (wa-js reads it a microtask later).
    queueMicrotask(() => {
      const body = textOf(msg);
      const previousBody = lastBodies.has(msg) ? lastBodies.get(msg) : null;
      lastBodies.set(msg, body);
      const { chatId, who } = senderOf(msg);
      emit("edited", {
        id: widText(msg.id), chat: chatId, from: who.from, phone: who.phone, lid: who.lid,
        body, previousBody,
        timestamp: Math.floor(Number(msg.latestEditSenderTimestampMs || Date.now()) / 1000),
      });
    });
  };

  // wwebjs: reactions are written through the reaction table's bulkUpsert; its caller reads
  // it from the module each time, so the module's property is where to listen.
  const watchReactions = (module) => {
    const table = module.reactionTableMode;
    const original = table.bulkUpsert;
    if (original.__wakeful) return;
    const wrapped = function (rows, ...rest) {
      try {
        for (const row of Array.isArray(rows) ? rows : []) {
          const key = row.id;
          if (!key || key.fromMe || isMe(row.author || row.from)) continue;
          const parent = widText(row.reactionParentKey);
          const who = identify(row.author || row.from);
          const reaction = text(row.reactionText);
          emit("reaction", {
            id: widText(key), messageId: parent,
            chat: widText(row.reactionParentKey && row.reactionParentKey.remote) || parent.split("_")[1] || "",
            from: who.from, phone: who.phone, lid: who.lid,
            reaction, removed: reaction === "",
            timestamp: Math.floor(Number(row.reactionTimestamp || Date.now()) / 1000),
          });
        }
      } catch (_) { /* never in WhatsApp's way */ }
      return original.apply(this, [rows, ...rest]);
    };
    wrapped.__wakeful = true;
    table.bulkUpsert = wrapped;
  };

  const GROUP_ACTIONS = {
    add: "join", invite: "join", linked_group_join: "join",
    remove: "leave", leave: "leave",
  };
  const reportGroupNotification = (msg, chatId) => {
    if (!chatId.endsWith("@g.us")) return;
    const subtype = text(msg.subtype) || null;
    const author = msg.author ? identify(msg.author).from : null;
    const participants = (msg.recipients || []).map((r) => identify(r).from);
    emit("group", {
      chat: chatId, action: GROUP_ACTIONS[subtype] || "update", subtype, author, participants,
      timestamp: msg.t || Math.floor(Date.now() / 1000),
    });
  };

  // wwebjs: messages WhatsApp could not decrypt are asked of the phone again, in batches,
  // with WhatsApp's own switch for it turned on; a fan-out the phone never had is not.
  const resendQueue = new Set();
  let resendTimer = null;
  const askPhoneToResend = (msg) => {
    if (!chat || !chat.Resend) return;
    if (msg.subtype && String(msg.subtype).endsWith("_unavailable_fanout")) return;
    resendQueue.add(msg);
    if (resendTimer) return;
    resendTimer = setTimeout(() => {
      resendTimer = null;
      const batch = [...resendQueue].filter((m) => m.type === "ciphertext");
      resendQueue.clear();
      if (!batch.length) return;
      try {
        if (chat.Gating) chat.Gating.isPlaceholderMessageResendEnabled = () => true;
        Promise.resolve(chat.Resend.handlePlaceholderMsgsSeen(batch, true)).catch(() => undefined);
      } catch (_) { /* the phone will send it again on its own, or not */ }
    }, config.resendMs);
  };

  const attachReceiving = () => {
    const { Msg } = chat.Collections;
    watchProtocolMessages(Msg);
    Msg.on("change:type", onTypeChange);
    Msg.on("change:latestEditMsgKey", onEdit);
    if (chat.Reactions) watchReactions(chat.Reactions);
  };

  // The file of a received message, fetched and decrypted by WhatsApp Web as wwebjs does.
  const toBase64 = (buffer) => {
    const bytes = new Uint8Array(buffer);
    let binary = "";
    for (let i = 0; i < bytes.length; i += 0x8000) {
      binary += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(binary);
  };
  const downloadMedia = async (id) => {
    if (!chat) throw new Error("WhatsApp Web's chats are not loaded yet");
    const { Msg } = chat.Collections;
    let msg = Msg.get(id);
    if (!msg && typeof Msg.getMessagesById === "function") {
      const found = await Msg.getMessagesById([id]);
      msg = found && found.messages && found.messages[0];
    }
    if (!msg) return { missing: "no such message" };
    if (!MEDIA_TYPES.has(msg.type) || !msg.directPath || !msg.mediaData) return { missing: "the message has no file" };
    if (!chat.Download) throw new Error("WhatsApp Web's download manager is missing (WAWebDownloadManager)");
    const limit = config.maxDownloadBytes;
    const tooLarge = (size) => {
      const mb = (n) => `${(n / 1024 / 1024).toFixed(1)} MB`;
      return new Error(`the file is ${mb(size)}, over the ${mb(limit)} limit (MEDIA_DOWNLOAD_MAX_MB)`);
    };
    if (limit > 0 && Number(msg.size) > limit) throw tooLarge(Number(msg.size));
    if (msg.mediaData.mediaStage === "REUPLOADING") throw new Error("the file expired; the phone is uploading it again, try again later");
    if (msg.mediaData.mediaStage !== "RESOLVED" && typeof msg.downloadMedia === "function") {
      await msg.downloadMedia({ downloadEvenIfExpensive: true, rmrReason: 1, isUserInitiated: true });
    }
    const stage = String(msg.mediaData.mediaStage || "");
    if (stage.includes("ERROR") || stage === "FETCHING") throw new Error(`WhatsApp could not fetch the file (${stage})`);
    // The download wants a performance logger; a stand-in that records nothing.
    const qpl = { addAnnotations() { return this; }, addPoint() { return this; } };
    let data;
    try {
      data = await chat.Download.downloadManager.downloadAndMaybeDecrypt({
        directPath: msg.directPath, encFilehash: msg.encFilehash, filehash: msg.filehash,
        mediaKey: msg.mediaKey, mediaKeyTimestamp: msg.mediaKeyTimestamp, type: msg.type,
        signal: new AbortController().signal, downloadQpl: qpl,
      });
    } catch (err) {
      if (err && err.status === 404) return { missing: "the file is no longer on WhatsApp's servers" };
      throw err;
    }
    if (limit > 0 && data.byteLength > limit) throw tooLarge(data.byteLength);
    return {
      data: toBase64(data),
      mimetype: text(msg.mimetype) || "application/octet-stream",
      filename: text(msg.filename) || null,
    };
  };

  const attachChat = () => {
    if (chat || attachChat.waiting) return;
    attachChat.waiting = true;
    whenModules("chat", CHAT, (found) => {
      chat = found;
      chat.Collections.Msg.on("add", onMessage);
      attachReceiving();
      reportReady();
    });
  };

  const onSocketState = (state) => {
    emit("state", { state });
    if (UNPAIRED.has(state)) {
      sawUnpaired = true;
      // WhatsApp stops rotating the QR after a while; ask for more, as a person would click
      // (not while a pairing code is being typed: a new QR would void it).
      if (state === "UNPAIRED_IDLE" && !pairing.active) auth.Cmd.refreshQR?.();
    }
    // Leaving UNPAIRED means the phone has linked: the sync that follows may be long.
    if ((sawUnpaired && LINKING.has(state)) || state === "CONNECTED") reportAuthenticated();
    if (state === "CONNECTED" && auth.Socket.hasSynced) attachChat();
  };

  const onStreamMode = (mode) => {
    if (BLOCKING_MODES.has(mode)) emit("state", { state: mode });
  };

  const logoutEvent = () => emit("logout", { reason: "logged out from the phone" });

  const attachAuth = (found) => {
    auth = found;
    const { Socket, Conn, Cmd, Stream } = auth;
    Socket.on("change:state", (_model, state) => onSocketState(state));
    Socket.on("change:hasSynced", (_model, synced) => {
      if (synced) attachChat();
    });
    Conn.on("change:ref", (_model, ref) => { reportQr(ref); });
    Cmd.on("logout", logoutEvent);
    Cmd.on("logout_from_bridge", logoutEvent);
    Cmd.on("offline_progress_update_from_bridge", reportSync);
    if (Stream) {
      Stream.on("change:mode", (_model, mode) => onStreamMode(mode));
      onStreamMode(Stream.mode);
    }
    onSocketState(Socket.state);
    if (UNPAIRED.has(Socket.state)) reportQr(Conn.ref);
    if (Socket.hasSynced) attachChat();
  };

  whenModules("login", LOGIN, attachAuth);

  // Calls from the driver --------------------------------------------------------------

  const newPairCode = async () => {
    const linking = auth.AltLinking;
    linking.setPairingType?.("ALT_DEVICE_LINKING");
    await linking.initializeAltDeviceLinking?.();
    const code = await linking.startAltLinkingFlow(pairing.phone, true);
    emit("pair_code", { code });
    return code;
  };
  const schedulePairRefresh = () => {
    clearTimeout(pairing.timer);
    pairing.timer = setTimeout(async () => {
      if (!pairing.active || authenticated || !UNPAIRED.has(auth.Socket.state)) {
        stopPairing();
        return;
      }
      if (pairing.refreshes >= config.pairRefreshes) {
        // Nobody typed it: back to QR codes, which the phone can scan instead.
        stopPairing();
        auth.Cmd.refreshQR?.();
        return;
      }
      pairing.refreshes += 1;
      try {
        await newPairCode();
        schedulePairRefresh();
      } catch (_) {
        stopPairing();
      }
    }, config.pairRefreshMs);
  };

  const toWid = (to) => {
    const id = String(to).trim().replace(/^\+/, "");
    return chat.WidFactory.createWid(id.includes("@") ? id : `${id}@c.us`);
  };

  // Sending more than text ------------------------------------------------------------
  // Media, replies, reactions, locations, contact cards and presence: the modules the
  // maintained clients use for them, resolved at the first such send (text does not wait
  // for them; a build without one fails that send, naming the module).
  const SEND_MORE = {
    OpaqueData: { names: ["WAWebMediaOpaqueData"], pick: (m) => (typeof m.createFromData === "function" ? m : m.default) },
    PrepRawMedia: { names: ["WAWebPrepRawMedia"], pick: has("prepRawMedia") },
    MediaStorage: { names: ["WAWebMediaStorage"], pick: has("getOrCreateMediaObject") },
    MediaTypes: { names: ["WAWebMmsMediaTypes"], pick: has("msgToMediaType") },
    Upload: { names: ["WAWebMediaMmsV4Upload"], pick: has("uploadMedia") },
    Reaction: { names: ["WAWebSendReactionMsgAction"], pick: has("sendReactionToMsg") },
    ChatState: { names: ["WAWebChatStateBridge"], pick: has("sendChatStateComposing") },
    Seen: { names: ["WAWebUpdateUnreadChatAction"], pick: has("sendSeen") },
    MsgReply: { names: ["WAWebMsgReply"], pick: has("canReplyMsg"), optional: true },
  };
  let more = null;
  const sendMore = () => {
    if (more) return more;
    const { found, missing } = resolveAll(SEND_MORE);
    if (missing.length) throw new Error(`WhatsApp Web changed: ${missing.join(", ")} not found (the bridge needs an update)`);
    more = found;
    return more;
  };

  const requireChats = () => {
    if (!auth) throw new Error("WhatsApp Web is not loaded");
    if (auth.Socket.state !== "CONNECTED") throw new Error(`not connected (${auth.Socket.state})`);
    if (!chat) throw new Error("WhatsApp Web's chats are not loaded yet");
  };

  const outgoingChat = async (to) => {
    const found = await chat.FindChat.findOrCreateLatestChat(toWid(to), "createChat");
    const target = found && found.chat && chat.Collections.Chat.get(found.chat.id);
    if (!target) throw new Error(`no chat with ${to}`);
    return target;
  };

  // A new outgoing message in `target`, addressed as WhatsApp Web addresses its own.
  const outgoingMessage = async (target, fields) => {
    const m = chat;
    const pn = m.MeUser.getMaybeMePnUser();
    const lid = m.MeUser.getMaybeMeLidUser?.();
    const isGroup = typeof target.id.isGroup === "function" && target.id.isGroup();
    const isLid = typeof target.id.isLid === "function" && target.id.isLid();
    const lidGroup = isGroup && !(target.groupMetadata && target.groupMetadata.isLidAddressingMode === false);
    const from = ((isLid || lidGroup) && lid) || pn;
    const participant = isGroup ? (m.WidFactory.asUserWidOrThrow ? m.WidFactory.asUserWidOrThrow(from) : from) : undefined;
    const key = new m.MsgKey({ from, to: target.id, id: await m.MsgKey.newId(), participant, selfDir: "out" });
    return {
      key,
      message: {
        id: key, ack: 0, from, to: target.id, local: true, self: "out",
        t: Math.floor(Date.now() / 1000), isNewMsg: true, type: "chat",
        ...(m.Ephemeral.getEphemeralFields(target) || {}),
        ...fields,
      },
    };
  };

  const sendToChat = async (target, message) => {
    const result = chat.SendMsg.addAndSendMsgToChat(target, message);
    const [added, sent] = Array.isArray(result) ? result : [result, null];
    await added;
    const outcome = sent ? await sent : null;
    const code = outcome && typeof outcome === "object" ? outcome.messageSendResult : outcome;
    if (typeof code === "string" && code !== "OK") throw new Error(`WhatsApp did not send the message: ${code}`);
  };

  const findMessage = async (id) => {
    const Msg = chat.Collections.Msg;
    const found = Msg.get(id) || (typeof Msg.getMessagesById === "function"
      ? (await Msg.getMessagesById([id]))?.messages?.[0] : null);
    if (!found) throw new Error(`the message ${id} is not in WhatsApp Web's history`);
    return found;
  };

  const quoting = async (target, id) => {
    if (!id) return {};
    const quoted = await findMessage(id);
    const mods = sendMore();
    const canReply = mods.MsgReply
      ? mods.MsgReply.canReplyMsg(typeof quoted.unsafe === "function" ? quoted.unsafe() : quoted)
      : quoted.canReply?.() !== false;
    if (!canReply) throw new Error(`the message ${id} cannot be replied to`);
    return quoted.msgContextInfo(target);
  };

  const fileOf = ({ data, mimetype, filename }) => {
    const binary = atob(data);
    const bytes = new Uint8Array(binary.length);
    for (let i = 0; i < binary.length; i += 1) bytes[i] = binary.charCodeAt(i);
    return new File([bytes], filename || "file", { type: mimetype, lastModified: Date.now() });
  };

  // The file prepared and uploaded (encrypted) as WhatsApp Web does before it sends media;
  // what comes back are the message's media fields.
  const uploadMedia = async (content) => {
    const mods = sendMore();
    const kind = content.kind;
    const file = fileOf(content);
    const opaque = await mods.OpaqueData.createFromData(file, content.mimetype);
    const prep = mods.PrepRawMedia.prepRawMedia(opaque, {
      asSticker: kind === "sticker", isPtt: kind === "voice", asDocument: kind === "document", asGif: false,
    });
    const media = await prep.waitForPrep();
    if (!media || !media.filehash) throw new Error("WhatsApp Web could not prepare the file");
    const object = mods.MediaStorage.getOrCreateMediaObject(media.filehash);
    const mediaType = mods.MediaTypes.msgToMediaType({ type: media.type, isGif: media.isGif });
    if (kind === "voice" && media.type === "ptt" && !media.waveform && object.contentInfo?.waveform) {
      media.waveform = object.contentInfo.waveform;
    }
    if (!(media.mediaBlob instanceof mods.OpaqueData)) {
      media.mediaBlob = await mods.OpaqueData.createFromData(media.mediaBlob, media.mediaBlob.type);
    }
    media.renderableUrl = media.mediaBlob.url();
    object.consolidate(media.toJSON());
    media.mediaBlob.autorelease();
    const uploaded = await mods.Upload.uploadMedia({ mimetype: media.mimetype, mediaObject: object, mediaType });
    const entry = uploaded && uploaded.mediaEntry;
    if (!entry) throw new Error("WhatsApp did not take the file (the upload failed)");
    media.set({
      clientUrl: entry.mmsUrl, deprecatedMms3Url: entry.deprecatedMms3Url, directPath: entry.directPath,
      mediaKey: entry.mediaKey, mediaKeyTimestamp: entry.mediaKeyTimestamp, filehash: object.filehash,
      encFilehash: entry.encFilehash, uploadhash: entry.uploadHash, size: object.size,
      streamingSidecar: entry.sidecar, firstFrameSidecar: entry.firstFrameSidecar,
    });
    const fields = { ...media, ...(typeof media.toJSON === "function" ? media.toJSON() : {}) };
    delete fields.mediaBlob;
    if (kind !== "sticker") fields.body = media.preview;
    if (content.caption) fields.caption = content.caption;
    if (kind === "document" && content.filename) fields.filename = content.filename;
    return fields;
  };

  const contentFields = async (content) => {
    switch (content.kind) {
      case "text":
        return { type: "chat", body: content.text };
      case "location": {
        const loc = [content.name, content.address].filter(Boolean).join("\n");
        return { type: "location", lat: content.latitude, lng: content.longitude, ...(loc ? { loc } : {}), body: "" };
      }
      case "contact":
        return { type: "vcard", body: content.vcard, vcardFormattedName: content.name };
      case "image": case "video": case "audio": case "voice": case "document": case "sticker":
        return uploadMedia(content);
      default:
        throw new Error(`cannot send a message of kind ${content.kind}`);
    }
  };

  const sendContent = async (to, content) => {
    requireChats();
    const target = await outgoingChat(to);
    if (content.kind === "reaction") {
      const reacted = await findMessage(content.messageId);
      const where = widText(reacted.id && reacted.id.remote);
      if (where && where !== widText(target.id)) throw new Error(`the message ${content.messageId} is not in the chat with ${to}`);
      const outcome = await sendMore().Reaction.sendReactionToMsg(reacted, content.emoji || "");
      const code = outcome && typeof outcome === "object" ? outcome.messageSendResult : outcome;
      if (typeof code === "string" && code !== "OK") throw new Error(`WhatsApp did not send the reaction: ${code}`);
      return `reaction_${content.messageId}`;
    }
    const fields = { ...(await contentFields(content)), ...(await quoting(target, content.replyTo)) };
    const { key, message } = await outgoingMessage(target, fields);
    await sendToChat(target, message);
    return key.toString();
  };

  // Before an answer: the chat read (as a person opening it), then "typing…"/"recording…".
  const presence = async (to, state) => {
    requireChats();
    const mods = sendMore();
    const target = await outgoingChat(to);
    const stream = auth.Stream;
    try {
      stream?.markAvailable?.();
      await mods.Seen.sendSeen({ chat: target, threadId: undefined });
    } finally {
      stream?.markUnavailable?.();
    }
    if (state === "typing") await mods.ChatState.sendChatStateComposing(target.id);
    else if (state === "recording") await mods.ChatState.sendChatStateRecording(target.id);
  };

  window.__wakefulBridge = {
    state: () => {
      if (auth) return auth.Socket.state;
      return outdated ? "BRIDGE_OUTDATED" : "UNLAUNCHED";
    },
    sendText: async (to, body) => {
      if (!auth) throw new Error("WhatsApp Web is not loaded");
      if (auth.Socket.state !== "CONNECTED") throw new Error(`not connected (${auth.Socket.state})`);
      if (!chat) throw new Error("WhatsApp Web's chats are not loaded yet");
      const m = chat;
      // 'createChat' is the origin WhatsApp allows to create a LID chat; the answer is a
      // plain object, the chat model is in the chat store (a phone number may have been
      // redirected to its LID chat).
      const found = await m.FindChat.findOrCreateLatestChat(toWid(to), "createChat");
      const target = found && found.chat && m.Collections.Chat.get(found.chat.id);
      if (!target) throw new Error(`no chat with ${to}`);
      const pn = m.MeUser.getMaybeMePnUser();
      const lid = m.MeUser.getMaybeMeLidUser?.();
      const isGroup = typeof target.id.isGroup === "function" && target.id.isGroup();
      const isLid = typeof target.id.isLid === "function" && target.id.isLid();
      // Our own address in the chat's addressing mode: LID chats and (LID-addressed) groups
      // get our LID, a phone-number chat our number.
      const lidGroup = isGroup && !(target.groupMetadata && target.groupMetadata.isLidAddressingMode === false);
      const from = ((isLid || lidGroup) && lid) || pn;
      const participant = isGroup ? (m.WidFactory.asUserWidOrThrow ? m.WidFactory.asUserWidOrThrow(from) : from) : undefined;
      const key = new m.MsgKey({ from, to: target.id, id: await m.MsgKey.newId(), participant, selfDir: "out" });
      const message = {
        ...(m.Ephemeral.getEphemeralFields(target) || {}),
        id: key, ack: 0, body, from, to: target.id, local: true, self: "out",
        t: Math.floor(Date.now() / 1000), isNewMsg: true, type: "chat",
      };
      const result = m.SendMsg.addAndSendMsgToChat(target, message);
      const [added, sent] = Array.isArray(result) ? result : [result, null];
      await added;
      const outcome = sent ? await sent : null;
      const code = outcome && typeof outcome === "object" ? outcome.messageSendResult : outcome;
      if (typeof code === "string" && code !== "OK") {
        throw new Error(`WhatsApp did not send the message: ${code}`);
      }
      // The serialized key is a minified property in current builds: only toString is stable.
      return key.toString();
    },
    sendContent,
    presence,
    requestPairCode: async (phone) => {
      if (!auth || !auth.AltLinking) throw new Error("linking by code is not available");
      pairing.active = true;
      pairing.phone = String(phone);
      pairing.refreshes = 0;
      try {
        const code = await newPairCode();
        schedulePairRefresh();
        return code;
      } catch (err) {
        stopPairing();
        throw err;
      }
    },
    logout: async () => {
      if (!auth) throw new Error("WhatsApp Web is not loaded");
      await auth.Socket.logout();
    },
    downloadMedia: (id) => downloadMedia(String(id)),
  };

  // Contacts and groups: number checks and the account's groups, read on demand ---------
  // As whatsapp-web.js (getNumberId) and wa-js (contact.queryWidExists) do it today: the
  // servers are asked through WAWebQueryExistsJob.queryWidExists, which answers with the
  // account's wid (the number as WhatsApp has it), or nothing. The pacing is the driver's
  // caller's: this asks once per call. Groups are the chats with group metadata; their
  // members are LIDs in LID-addressed groups, told as phone numbers where WhatsApp knows them.
  const LOOKUP = {
    QueryExists: {
      names: ["WAWebQueryExistsJob"], pick: (m) => (typeof m.queryWidExists === "function" ? m : null), shape: true,
    },
  };
  let lookup = null;
  const lookupModules = () => {
    if (lookup) return lookup;
    const result = resolveAll(LOOKUP);
    if (result.missing.length) {
      throw new Error(`WhatsApp Web changed; the bridge needs an update: missing ${result.missing.join(", ")}`);
    }
    lookup = result.found;
    return lookup;
  };
  const models = (value) => (Array.isArray(value) ? value : (value && value.getModelsArray && value.getModelsArray()) || []);
  const groupChats = () => models(chat.Collections.Chat)
    .filter((c) => c && widText(c.id).endsWith("@g.us") && c.groupMetadata);
  const member = (p) => {
    const who = identify(p.id);
    return {
      id: who.from, phone: who.phone, lid: who.lid,
      isAdmin: Boolean(p.isAdmin || p.isSuperAdmin), isSuperAdmin: Boolean(p.isSuperAdmin),
    };
  };
  const groupSummary = (c) => {
    const meta = c.groupMetadata;
    return {
      id: widText(c.id),
      name: text(meta.subject || c.name || c.formattedTitle) || null,
      size: models(meta.participants).length || Number(meta.size) || 0,
    };
  };

  Object.assign(window.__wakefulBridge, {
    queryExists: async (phone) => {
      requireChats();
      const digits = String(phone).replace(/\D/g, "");
      const answer = await lookupModules().QueryExists.queryWidExists(chat.WidFactory.createWid(`${digits}@c.us`));
      if (!answer || !answer.wid) return { exists: false };
      let lid = null;
      try {
        lid = widText(chat.Contact && chat.Contact.getCurrentLid && chat.Contact.getCurrentLid(answer.wid)) || null;
      } catch (_) { /* the LID is a bonus */ }
      return { exists: true, id: widText(answer.wid), lid, business: Boolean(answer.biz) };
    },
    groups: async () => {
      requireChats();
      return groupChats().map(groupSummary);
    },
    group: async (id) => {
      requireChats();
      const found = groupChats().find((c) => widText(c.id) === String(id));
      if (!found) return null;
      // The members as WhatsApp's servers have them now, not as this page last saw them.
      const metadata = chat.Collections.GroupMetadata;
      try { if (metadata && metadata.update) await metadata.update(found.id); } catch (_) { /* stale is better than none */ }
      const meta = found.groupMetadata;
      return {
        ...groupSummary(found),
        description: text(meta.desc) || null,
        owner: meta.owner ? identify(meta.owner).from : null,
        createdAt: Number(meta.creation) || null,
        announce: Boolean(meta.announce),
        participants: models(meta.participants).map(member),
      };
    },
  });
})();
