/* lua_scripts.h - the Lua scripts that Redis runs for us, embedded at build
 * time from src/lua/ (the Makefile turns each into a string; publish and
 * read start with lib.lua). What each takes and returns is written at the
 * top of its file; tests/integration/test_lua.py runs them on a real Redis.
 */
#ifndef PW_LUA_SCRIPTS_H
#define PW_LUA_SCRIPTS_H

extern const char lua_publish[];   /* lib.lua + publish.lua */
extern const char lua_read[];      /* lib.lua + read.lua */
extern const char lua_heartbeat[]; /* heartbeat.lua */
extern const char lua_procs[];     /* procs.lua */
extern const char lua_info[];      /* lib.lua + info.lua */
extern const char lua_subs[];      /* subs.lua */
extern const char lua_channels[];  /* channels.lua */
extern const char lua_commit[];    /* commit.lua */

#endif
