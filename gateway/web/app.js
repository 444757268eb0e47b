// The web client: a WebSocket to /ws, chat lines out as text frames, JSON-mode objects in.
// Everything a peer wrote is inserted with textContent: client text is hostile.
"use strict";

(() => {
  const $ = (id) => document.getElementById(id);
  const SERVER = "server";
  const MAX_ITEMS = 1000;           // lines kept per window
  const MAX_SEEN = 4000;            // message ids remembered per window, to drop replays
  const BACKOFF_FIRST = 500;        // ms before the first reconnect
  const BACKOFF_MAX = 15000;

  const state = {
    ws: null,
    connected: false,
    me: "",
    wanted: localStorage.getItem("chat.nick") || "",
    windows: new Map(),             // "server", "#room", "@nick" -> window
    current: SERVER,
    serverRoom: "",                 // the server's idea of our current room (for /me)
    backoff: BACKOFF_FIRST,
    catchingUp: new Set(),          // rooms whose "/history ROOM after ID" is answered yet
  };

  // --- windows ------------------------------------------------------------------------

  function windowFor(name) {
    let win = state.windows.get(name);
    if (!win) {
      win = { name, items: [], members: new Set(), lastId: "", seen: new Set(), unread: false, topic: "" };
      state.windows.set(name, win);
      drawRooms();
    }
    return win;
  }

  function show(name) {
    state.current = name;
    const win = windowFor(name);
    win.unread = false;
    drawTitle();
    $("log").replaceChildren(...win.items);
    $("log").scrollTop = $("log").scrollHeight;
    drawRooms();
    drawMembers();
  }

  function drawTitle() {
    const win = state.windows.get(state.current);
    $("title").textContent = state.current;
    $("topic").textContent = win && win.topic ? win.topic : "";
  }

  function drawRooms() {
    const items = [];
    for (const win of state.windows.values()) {
      const li = document.createElement("li");
      li.textContent = win.name;
      li.dataset.name = win.name;
      li.classList.toggle("current", win.name === state.current);
      li.classList.toggle("unread", win.unread);
      li.addEventListener("click", () => show(win.name));
      items.push(li);
    }
    $("rooms").replaceChildren(...items);
  }

  function drawMembers() {
    const win = state.windows.get(state.current);
    const names = win ? [...win.members].sort((a, b) => a.localeCompare(b)) : [];
    $("members").replaceChildren(...names.map((nick) => {
      const li = document.createElement("li");
      li.textContent = nick;
      li.title = "private chat with " + nick;
      li.addEventListener("click", () => { if (nick !== state.me) show("@" + nick); });
      return li;
    }));
  }

  function append(name, kind, parts) {
    const win = windowFor(name);
    const li = document.createElement("li");
    li.className = kind;
    for (const [cls, text] of parts) {
      const span = document.createElement("span");
      span.className = cls;
      span.textContent = text;
      li.append(span);
    }
    win.items.push(li);
    if (win.items.length > MAX_ITEMS) win.items.splice(0, win.items.length - MAX_ITEMS);
    if (name === state.current) {
      const log = $("log");
      log.append(li);
      while (log.childElementCount > MAX_ITEMS) log.firstElementChild.remove();
      log.scrollTop = log.scrollHeight;
    } else if (!win.unread) {
      win.unread = true;
      drawRooms();
    }
  }

  function clock(ts) {
    const when = ts ? new Date(ts * 1000) : new Date();
    return when.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }

  function notice(text, kind) {
    const el = $("notice");
    el.textContent = text;
    el.className = kind || "";
    el.hidden = !text;
  }

  // --- what the server sends ------------------------------------------------------------

  function seenBefore(win, id) {
    if (!id) return false;
    if (win.seen.has(id)) return true;
    win.seen.add(id);
    if (win.seen.size > MAX_SEEN) win.seen.delete(win.seen.values().next().value);
    win.lastId = id;
    return false;
  }

  function chatLine(name, obj, kind, extra) {
    const win = windowFor(name);
    if (seenBefore(win, obj.id)) return;
    const parts = [["time", clock(obj.ts)]];
    if (kind === "action") parts.push(["action", "* " + obj.from + " " + obj.text]);
    else parts.push(["from", obj.from || "?"], ["text", obj.text || ""]);
    append(name, kind + (extra || ""), parts);
  }

  function info(text, kind) {
    const name = state.windows.has(state.current) ? state.current : SERVER;
    append(name, kind, [["time", clock()], ["text", (kind === "error" ? "! " : "* ") + text]]);
  }

  function eventLine(name, text) {
    if (state.windows.has(name)) append(name, "info", [["time", clock()], ["text", "* " + text]]);
  }

  const handlers = {
    message: (o) => chatLine(o.room, o, "message"),
    action: (o) => chatLine(o.room, o, "action"),
    history: (o) => chatLine(o.room, o, o.of === "action" ? "action" : "message", " history"),
    private: (o) => chatLine("@" + (o.from === state.me ? o.to : o.from), o, "message"),
    join: (o) => { windowFor(o.room).members.add(o.from); eventLine(o.room, o.text); drawMembers(); },
    part: (o) => { windowFor(o.room).members.delete(o.from); eventLine(o.room, o.text); drawMembers(); },
    quit: (o) => forRoomsOf(o.from, (win) => { win.members.delete(o.from); eventLine(win.name, o.text); }),
    nick: (o) => forRoomsOf(o.from, (win) => {
      win.members.delete(o.from);
      win.members.add(o.to);
      eventLine(win.name, o.text);
    }),
    topic: (o) => { setTopic(o.room, Array.isArray(o.args) ? String(o.args[1] || "") : ""); eventLine(o.room, o.text); },
    info: (o) => onInfo(o),
    error: (o) => onError(o),
  };

  function forRoomsOf(nick, fn) {
    for (const win of state.windows.values()) if (win.members.has(nick)) fn(win);
    drawMembers();
  }

  function setMembers(room, nicks) {
    windowFor(room).members = new Set(nicks.filter(Boolean));
    drawMembers();
  }

  function setTopic(room, topic) {
    const win = windowFor(room);
    win.topic = topic || "";
    if (room === state.current) drawTitle();
  }

  // replies by their structured code (protocol.replies): args carry the data, text is for people
  const infoCodes = {
    welcome: (a) => { state.me = a[0] || state.me; },
    nick_set: (a) => {
      const nick = a[0];
      forRoomsOf(state.me, (win) => { win.members.delete(state.me); win.members.add(nick); });
      state.me = state.wanted = nick;
      localStorage.setItem("chat.nick", nick);
      $("nick").value = nick;
    },
    joined: (a) => {
      state.serverRoom = a[0];
      setTopic(a[0], a[1]);
      setMembers(a[0], a.slice(2));
    },
    join_topic: (a) => setTopic(a[0], a[1]),
    topic_is: (a) => setTopic(a[0], a[1]),
    members: (a) => setMembers(a[0], a.slice(1)),
    parted: (a) => {
      state.windows.delete(a[0]);
      state.serverRoom = a[1] || "";
      if (state.current === a[0]) show(SERVER); else drawRooms();
    },
    history: (a) => { state.catchingUp.delete(a[0]); },
    history_gap: (a) => { eventLine(a[0], "some older messages are no longer kept: there is a gap before these"); },
  };

  function onInfo(obj) {
    const act = infoCodes[obj.code];
    if (act) act(Array.isArray(obj.args) ? obj.args.map(String) : []);
    info(obj.text || "", "info");
  }

  function onError(obj) {
    const text = obj.text || "";
    // a server without "/history ROOM after ID" (its usage error): ask for the recent
    // history instead; ids seen before are dropped, so nothing shows twice
    const args = Array.isArray(obj.args) ? obj.args : [];
    if (state.catchingUp.size && (obj.code === "usage" || obj.code === "bad_argument") && args[0] === "history") {
      const rooms = [...state.catchingUp];
      state.catchingUp.clear();
      for (const room of rooms) send("/history " + room + " 100");
      return;
    }
    notice(text, "error");
    info(text, "error");
  }

  function onFrame(event) {
    let obj;
    try {
      obj = JSON.parse(event.data);
    } catch (err) {
      return;  // not ours to show
    }
    if (!obj || typeof obj !== "object") return;
    const handler = handlers[obj.type];
    if (handler) handler(obj);
  }

  // --- the connection -------------------------------------------------------------------

  function send(line) {
    if (!state.connected) {
      notice("not connected: not sent (reconnecting…)", "error");
      return false;
    }
    state.ws.send(line);
    return true;
  }

  function resync() {
    if (state.wanted) send("/nick " + state.wanted);
    for (const win of state.windows.values()) {
      if (!win.name.startsWith("#")) continue;
      send("/join " + win.name);
      if (win.lastId) {
        state.catchingUp.add(win.name);
        send("/history " + win.name + " after " + win.lastId);
      } else {
        send("/history " + win.name);
      }
    }
  }

  function setStatus(up, text) {
    const el = $("status");
    el.textContent = text;
    el.className = "status " + (up ? "up" : "down");
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    const ws = new WebSocket(scheme + location.host + "/ws");
    state.ws = ws;
    ws.addEventListener("open", () => {
      state.connected = true;
      state.backoff = BACKOFF_FIRST;
      setStatus(true, "connected");
      notice("");
      resync();
    });
    ws.addEventListener("message", onFrame);
    ws.addEventListener("close", (event) => {
      if (state.ws !== ws) return;
      if (state.connected) info("connection lost", "error");
      state.connected = false;
      const delay = Math.min(state.backoff, BACKOFF_MAX) * (0.5 + Math.random() / 2);
      state.backoff = Math.min(state.backoff * 2, BACKOFF_MAX);
      const why = event.reason ? " (" + event.reason + ")" : "";
      setStatus(false, "disconnected");
      notice("connection lost" + why + ": reconnecting in " + Math.ceil(delay / 1000) + " s", "error");
      setTimeout(connect, delay);
    });
  }

  // --- what the user does ---------------------------------------------------------------

  function roomName(text) {
    const name = text.trim().toLowerCase();
    return name.startsWith("#") ? name : "#" + name;
  }

  function say(text) {
    const here = state.current;
    if (text.startsWith("/me ") && here.startsWith("#")) {
      if (state.serverRoom !== here && !send("/join " + here)) return false;
      return send(text);
    }
    if (text.startsWith("/") && !text.startsWith("//")) {
      const join = /^\/join\s+(#\S+)/i.exec(text);
      if (join && send(text)) { show(roomName(join[1])); return send("/history " + roomName(join[1])); }
      return send(text);
    }
    const body = text.startsWith("//") ? text.slice(1) : text;
    if (here === SERVER) {
      notice("join a room first (or pick a private chat)", "error");
      return false;
    }
    return send("/msg " + (here.startsWith("@") ? here.slice(1) : here) + " " + body);
  }

  function onSubmit(id, act) {
    $(id).addEventListener("submit", (event) => {
      event.preventDefault();
      act();
    });
  }

  onSubmit("say-form", () => {
    const input = $("text");
    const text = input.value.replace(/[\r\n]+/g, " ").trim();
    if (text && say(text)) input.value = "";
  });
  onSubmit("nick-form", () => {
    const nick = $("nick").value.trim();
    if (nick) { state.wanted = nick; send("/nick " + nick); }
  });
  onSubmit("join-form", () => {
    const input = $("room");
    if (!input.value.trim()) return;
    const room = roomName(input.value);
    if (send("/join " + room) && send("/history " + room)) {
      input.value = "";
      show(room);
    }
  });

  $("nick").value = state.wanted;
  windowFor(SERVER);
  show(SERVER);
  connect();
})();
