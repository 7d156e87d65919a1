-- test_threads.lua - the `threads` setting as a user meets it: out-of-range values are a
-- clear error from a recipe (threads=100000 used to crash inside libgomp), the default
-- under `taskset -c 0` is one thread, and the host makes OpenMP's threads wait passively
-- unless the user chose otherwise (tests/c/test_threads.c checks the C contract).
package.path = "tests/lua/?.lua;" .. package.path
local T = require "harness"
local lt = require "luatrain"

local q = T.shell_quote
local function luatrain(args) return T.run(q(T.luatrain()) .. " " .. args) end

T.test("lt.set_num_threads: the range and non-integers are errors naming the value", function()
    local before = lt.get_num_threads()
    local range = ("outside 0..%d"):format(lt.max_threads())
    T.raises(function() lt.set_num_threads(100000) end, "threads: 100000 is " .. range, true)
    T.raises(function() lt.set_num_threads(-5) end, "threads: -5 is " .. range, true)
    T.raises(function() lt.set_num_threads(2.5) end, "threads: 2.5 is not an integer", true)
    T.raises(function() lt.set_num_threads(2 ^ 40) end, "is not an integer", true)
    T.raises(function() lt.set_num_threads("4") end, "threads: 4 is not an integer", true)
    T.eq(lt.get_num_threads(), before)
    lt.set_num_threads(0)
    T.eq(lt.get_num_threads(), lt.available_cpus())
    lt.set_num_threads(before)
end)

T.test("a recipe run with threads=100000 or threads=-5 stops with the message", function()
    for _, v in ipairs({ "100000", "-5" }) do
        local out, code = luatrain("recipes/train_tiny.lua threads=" .. v)
        T.eq(code, 1, out)
        T.ok(out:find("threads: " .. v .. " is outside 0..", 1, true), out)
        T.ok(not out:find("Segmentation", 1, true), out)
    end
end)

T.test("under taskset -c 0 the default is one thread", function()
    local _, have = T.run("command -v taskset >/dev/null")
    if have ~= 0 then
        print("taskset not found (util-linux): skipped")
        return
    end
    local out, code = T.run("taskset -c 0 " .. q(T.luatrain()) ..
        [[ -e 'local lt = require "luatrain"; lt.set_num_threads(0); print(lt.available_cpus(), lt.get_num_threads())']])
    T.eq(code, 0, out)
    T.eq(out, "1\t1\n")
end)

-- libgomp prints its settings at start-up under OMP_DISPLAY_ENV=verbose; the host starts
-- twice when it sets the policy, so the last print is the one the run uses.
local function spin_count(env)
    local out, code = T.run(env .. " OMP_DISPLAY_ENV=verbose " .. q(T.luatrain()) ..
        [[ -e 'io.write("policy=", tostring(os.getenv("OMP_WAIT_POLICY")), "\n")']])
    T.eq(code, 0, out)
    local last
    for n in out:gmatch("GOMP_SPINCOUNT = '(%d+)'") do last = n end
    return last, out:match("policy=(%S+)")
end

T.test("OpenMP waits passively unless OMP_WAIT_POLICY or GOMP_SPINCOUNT says otherwise", function()
    local clean = "env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT"
    local spins, policy = spin_count(clean)
    if not spins then
        print("OpenMP runtime is not libgomp (no GOMP_SPINCOUNT shown): skipped")
        return
    end
    T.eq(spins, "0")
    T.eq(policy, "nil") -- not passed on to what the run starts
    spins, policy = spin_count(clean .. " OMP_WAIT_POLICY=active")
    T.ok(spins ~= "0", "active kept")
    T.eq(policy, "active")
    spins = spin_count(clean .. " GOMP_SPINCOUNT=1234")
    T.eq(spins, "1234")
end)

T.done()
