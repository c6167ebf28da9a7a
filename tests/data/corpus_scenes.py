"""Hand-written LLaVA-style samples, one scene per image, for the validator corpus (tests/data/validator_corpus.py).

Written for vistune in the style of LLaVA-Instruct (answers that talk about the image as if seen, detailed
multi-paragraph answers to hard questions); nothing here is copied from LLaVA's prompts or data.
Each scene: a few conversation rounds, one detailed description, complex-reasoning questions, and the
objects in it (the bad items insert leaks about them).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Scene:
    """One imagined image and the samples an LLM could write about it."""

    name: str
    objects: tuple[str, ...]
    rounds: tuple[tuple[str, str], ...]
    description: str
    reasoning: tuple[tuple[str, str], ...]


KITCHEN = Scene(
    name="kitchen",
    objects=("woman", "cutting board", "pot", "child"),
    rounds=(
        ("What is the woman in the image doing?",
         "The woman is chopping vegetables on a wooden cutting board, most likely preparing a meal for the family."),
        ("Is anyone helping her?",
         "Yes, a young child is standing on a small stool beside her and stirring something in a bowl."),
        ("What is on the stove?",
         "There is a large silver pot on the stove with steam rising from it, so something is already cooking."),
        ("What could they be making together?",
         "It is hard to be certain, but the chopped carrots, celery and onions on the board, together with the "
         "steaming pot, suggest they are making a vegetable soup or a stew.\n\nThe child is mixing something in a "
         "separate bowl, which could be a simple batter for bread or dumplings to go with the soup. Cooking like "
         "this is a common way for parents to spend time with their children while teaching them basic kitchen "
         "skills, such as measuring, stirring and handling food safely."),
        ("How does the kitchen look?",
         "The kitchen is bright and a little cluttered, with jars of spices on the shelf, a bowl of lemons on the "
         "counter and a dish towel hanging from the oven door."),
    ),
    description=(
        "The image shows a warm, busy home kitchen where a woman and a young child are cooking together. The woman "
        "stands at the counter in a striped apron, slicing carrots on a wooden cutting board, with a pile of "
        "chopped celery and onions beside her. Next to her, the child stands on a small step stool so that she can "
        "reach the counter, and she is stirring a mixture in a large ceramic bowl with a wooden spoon.\n\nOn the "
        "stove behind them, a big silver pot is steaming, and a kettle sits on the back burner. The counter is "
        "crowded with ingredients and tools: a bowl of lemons, a bottle of olive oil, a measuring cup and a bag of "
        "flour. Open shelves above hold glass jars of spices and pasta, and sunlight comes in through a window over "
        "the sink, giving the room a cheerful, homely feeling."
    ),
    reasoning=(
        ("Why might the child be standing on a stool?",
         "The child is standing on a stool because the kitchen counter is built for adults and is too high for her "
         "to reach comfortably. Raising her to counter height lets her see into the bowl and stir without "
         "straining, and it keeps her close to the woman, who can supervise her. It also keeps her away from the "
         "hot stove behind them while she still takes part in the cooking, which is a sensible way to include a "
         "young child in preparing a meal safely."),
        ("What safety precautions should be taken in this situation?",
         "Several precautions matter when a young child helps in a kitchen like this one.\n\nFirst, the sharp "
         "knife and the cutting board should stay on the adult's side of the counter. The woman is slicing "
         "vegetables right next to the child, so the knife should be put down out of reach whenever she turns "
         "away.\n\nSecond, the steaming pot on the stove is a burn risk. Pot handles should be turned inward so the "
         "child cannot knock them, and the child should not reach across the stove.\n\nThird, the step stool "
         "should be stable and placed on a dry floor, since a wobbly stool near a counter full of bowls and jars "
         "could easily tip over.\n\nFinally, washing hands and keeping raw ingredients separate from cooked food "
         "are good habits to teach at the same time. With these precautions in place, cooking together can be a "
         "safe and fun activity."),
    ),
)

BEACH = Scene(
    name="beach",
    objects=("dog", "frisbee", "man", "surfboard"),
    rounds=(
        ("What animal is in the picture?", "There is a brown and white dog in the picture."),
        ("What is the dog doing?",
         "The dog is leaping into the air to catch a red frisbee above the sand, with all four paws off the "
         "ground."),
        ("Who threw the frisbee?",
         "A man in blue swim shorts, standing a few meters away near the water, appears to have thrown it."),
        ("What is the weather like?",
         "It looks like a clear, sunny day with a bright blue sky and only a few thin clouds near the horizon."),
        ("Is there anything else on the beach?",
         "Yes, a surfboard is stuck upright in the sand behind the man, and a couple of beach towels are spread "
         "out near a striped umbrella."),
    ),
    description=(
        "In this sunny beach scene, a medium-sized brown and white dog is captured in mid-air as it jumps to catch "
        "a red frisbee. Its body is stretched out and its ears flap upward, showing how much energy it put into "
        "the leap. A man in blue swim shorts stands near the edge of the water a few meters away, his arm still "
        "extended from the throw. Behind him, a white surfboard stands upright in the sand, and further along the "
        "shore two beach towels lie under a red and white striped umbrella. Gentle waves roll onto the beach, and "
        "the sky above is a clear, bright blue."
    ),
    reasoning=(
        ("What does this image suggest about the relationship between the man and the dog?",
         "The image suggests that the man and the dog share a close and playful relationship. Frisbee catching is "
         "a game that takes practice and trust: the dog has to watch the man's throw, anticipate where the disc "
         "will go and time its jump. The dog's confident leap and the man's relaxed stance show they have probably "
         "played this game many times. Spending an afternoon at the beach together, with the towels and umbrella "
         "set up nearby, also suggests that the dog is a well-loved family pet that is included in leisure time."),
        ("Why is a beach a good place for this activity?",
         "A beach is a good place for playing frisbee with a dog for a few reasons. The wide, open stretch of sand "
         "gives the dog plenty of room to run and jump without hitting obstacles like trees or benches. Sand is "
         "also softer than grass or pavement, which cushions the dog's landing after a high jump and reduces the "
         "risk of injury to its joints. Finally, the nearby water lets the dog cool off between throws on a hot, "
         "sunny day like this one."),
    ),
)

STREET = Scene(
    name="street",
    objects=("bus", "umbrella", "cyclist", "traffic light"),
    rounds=(
        ("What kind of vehicle is parked at the curb?",
         "A white double-decker bus with a red stripe is parked at the curb."),
        ("Is it raining?",
         "Yes, it seems to be raining: the pavement is wet and shiny, and several people are holding umbrellas."),
        ("How many people are waiting at the bus stop?", "There are three people waiting under the bus shelter."),
        ("What is the cyclist wearing?",
         "The cyclist is wearing a bright yellow rain jacket and a black helmet."),
    ),
    description=(
        "The image captures a rainy afternoon on a busy city street. A white double-decker bus with a red stripe "
        "is stopped at the curb on the left, its front door open, while three people wait under a glass bus "
        "shelter; one of them holds a black umbrella and another checks her phone. A cyclist in a bright yellow "
        "rain jacket rides along the bike lane next to the bus. On the right side of the street there is a row of "
        "shops with lit windows, including a bakery and a small bookshop, and their lights are reflected in the "
        "wet pavement. Further down the road, cars wait at a red traffic light, and the sky is low and gray."
    ),
    reasoning=(
        ("Why might the cyclist be wearing such a bright jacket?",
         "The cyclist is most likely wearing a bright yellow jacket to be visible to drivers. In rainy, gray "
         "weather like this, visibility is reduced, windshields are wet and the light is dim, so a dark figure on a "
         "bicycle can be hard to notice. A high-visibility color stands out against the gray street and makes it "
         "much easier for the bus driver and other motorists to spot the cyclist, which lowers the risk of an "
         "accident. The jacket is probably also waterproof, keeping the rider dry on the way."),
        ("What challenges might the people at the bus stop face today?",
         "The people waiting at the bus stop face a few challenges because of the weather. The rain means they "
         "have to stay under the small shelter or hold umbrellas, and the wet pavement makes walking slippery. "
         "Traffic tends to slow down in the rain, so buses may run late, which could make them late for work or "
         "appointments. When the bus arrives, they also have to step over puddles at the curb, and passing cars "
         "may splash them. Planning extra time for the journey is a sensible response to days like this."),
    ),
)

MARKET = Scene(
    name="market",
    objects=("fruit stand", "vendor", "scale", "basket"),
    rounds=(
        ("What is being sold at this stall?",
         "The stall is selling fresh fruit, arranged in neat rows of wooden crates."),
        ("Which fruits can you see?",
         "I can see apples, oranges, bananas, pears, pineapples, mangoes, grapes and a few baskets of "
         "strawberries."),
        ("Are the prices shown?",
         "Yes, small chalkboard signs are tucked into each crate. For example, the apples are marked $2.50 per "
         "pound and the mangoes $1.25 each."),
        ("Who is working at the stall?",
         "A vendor in a green apron is standing behind the crates and weighing a bag of oranges on a hanging "
         "scale."),
    ),
    description=(
        "The image shows a colorful outdoor fruit stall at a busy market. Wooden crates are lined up on a long "
        "table, each filled with a different fruit: shiny red apples, bright oranges, bunches of bananas, green "
        "pears, spiky pineapples, ripe mangoes and dark grapes. Small chalkboard signs in every crate show the "
        "prices in white handwriting. Behind the table, a vendor wearing a green apron weighs a bag of oranges on "
        "a hanging metal scale, while a customer with a woven basket waits in front of the stall. A striped "
        "awning shades the fruit, and other stalls selling vegetables and flowers can be seen in the background."
    ),
    reasoning=(
        ("Why might the vendor arrange the fruit in separate crates by type?",
         "Arranging the fruit in separate crates by type makes the stall easy for customers to browse: they can "
         "see at a glance what is available and compare the quality of each fruit. It also lets the vendor put a "
         "price sign in every crate, so customers do not have to ask about each item. The bright, contrasting "
         "colors of neighboring crates, red apples next to orange citrus and yellow bananas, make the whole stall "
         "eye-catching from a distance, which helps draw shoppers in a crowded market. Finally, keeping fruit "
         "types apart helps with handling, since soft fruit such as strawberries bruises easily under heavier "
         "fruit like pineapples."),
    ),
)

PLATFORM = Scene(
    name="platform",
    objects=("train", "suitcase", "clock", "passenger"),
    rounds=(
        ("Where was this photo taken?",
         "The photo was taken on a platform at a train station, with a train waiting on the left track."),
        ("What are the people carrying?",
         "Most of the passengers are carrying luggage: a woman pulls a large blue suitcase and a man has a "
         "backpack over one shoulder."),
        ("What time does the clock show?", "The large clock hanging above the platform shows about 7:45."),
        ("Is the train about to leave?",
         "It may be. The doors are still open, but a conductor is standing by the door and looking along the "
         "platform, which is often what happens just before departure."),
        ("What should a traveler do if they are running late for a train like this?",
         "A traveler who is running late has a few options, and the right one depends on how late they are and "
         "what kind of ticket they hold.\n\nIf there are only a couple of minutes left, the best move is to head "
         "straight to the platform rather than stopping at a ticket machine, as long as their ticket is valid "
         "already or can be bought on board. Many railways allow passengers to buy tickets from the conductor, "
         "though sometimes at a higher price. They should walk quickly but never run along the edge of the "
         "platform or try to squeeze through closing doors, since that is one of the most common causes of "
         "accidents at stations.\n\nIf the train has already left, the traveler should check the departure "
         "boards or the railway's app for the next service to the same destination. On busy routes, trains often "
         "run every fifteen or thirty minutes, so the delay may be short. A ticket for a specific train may not be "
         "valid on the next one, so it is worth asking at the ticket office whether it can be changed; some "
         "companies allow this for free or for a small fee, especially if the delay was caused by a late "
         "connecting train.\n\nFinally, if the trip is important, such as a connection to a flight or a job "
         "interview, the traveler should let the people waiting for them know as soon as possible and look at "
         "other ways to get there, such as a bus or a taxi. Planning to arrive at the station ten or fifteen "
         "minutes early, as the people on this platform seem to have done, is the simplest way to avoid the "
         "stress of a missed train altogether. Keeping an eye on the clock, like the one hanging above this "
         "platform, and knowing which platform the train leaves from before arriving at the station also saves "
         "valuable minutes on a busy morning."),
    ),
    description=(
        "The image shows a long, covered platform at a train station in the early morning. A red and silver "
        "passenger train is waiting on the left track with its doors open, and a conductor in a dark uniform "
        "stands beside one of the doors. Several passengers are walking along the platform: a woman in a beige "
        "coat pulls a large blue suitcase, a man with a backpack checks a paper ticket, and two students sit on a "
        "bench near a vending machine. A large round clock hangs from the roof, showing a quarter to eight, and "
        "yellow safety lines run along the edge of the platform. Light pours in through the glass roof, casting "
        "long shadows across the concrete floor."
    ),
    reasoning=(
        ("Why are there yellow lines along the edge of the platform?",
         "The yellow lines along the edge of the platform mark the safe waiting area. Trains pass close to the "
         "edge, and a fast train moving through a station creates a strong rush of air that can pull people or "
         "loose bags toward the tracks. By telling passengers to stay behind the line, the station keeps a safe "
         "gap between people and the moving trains. The bright color also makes the edge easy to see for people "
         "with poor eyesight, and the textured surface of such lines can often be felt underfoot, warning blind "
         "or distracted passengers that they are close to the edge."),
    ),
)

SKATEPARK = Scene(
    name="skatepark",
    objects=("skateboarder", "ramp", "helmet", "spectators"),
    rounds=(
        ("What is the young man doing?",
         "The young man is performing a trick on a skateboard, flying above the edge of a concrete ramp."),
        ("Is he wearing protective gear?",
         "He is wearing a black helmet, but no knee or elbow pads can be seen."),
        ("Are there other people around?",
         "Yes, a small group of spectators is sitting on a low wall at the top of the ramp, and two of them are "
         "filming him with their phones."),
        ("Does this look like a professional event?", "Not really, it looks more like an ordinary afternoon at "
         "a public skate park, with friends watching each other practice"),
    ),
    description=(
        "The image shows a young man skateboarding at an outdoor concrete skate park on a sunny afternoon. He is "
        "captured in mid-air above the lip of a curved ramp, his knees bent and his arms spread out for balance, "
        "while his skateboard stays close to his feet. He wears a black helmet, a loose gray T-shirt and jeans. "
        "On a low wall at the top of the ramp, a group of four spectators watches, two of them holding up phones "
        "to record the trick. The park has several ramps and rails covered in colorful graffiti, and a line of "
        "tall trees and a chain-link fence can be seen in the background."
    ),
    reasoning=(
        ("What skills are needed to perform a trick like the one in the image?",
         "A trick like this one, where the skater launches above the edge of a ramp, requires a mix of physical "
         "and mental skills. Balance is the most important: he has to keep his weight centered over the board "
         "while it leaves the concrete and land with both feet on it again. Timing is also crucial, since he must "
         "push off the lip of the ramp at just the right moment to get enough height. Strong legs and core "
         "muscles help him absorb the impact of landing. Finally, it takes confidence and a lot of practice, "
         "including many falls, which is one reason wearing a helmet like his is a good idea."),
    ),
)

LIVING_ROOM = Scene(
    name="living_room",
    objects=("television", "sofa", "cat", "lamp"),
    rounds=(
        ("What is on the television?",
         "The television is showing a news broadcast: a reporter stands in front of a flooded street, and a "
         "caption at the bottom of the screen reads \"Heavy rain causes flooding downtown\"."),
        ("Is anyone watching the TV?",
         "Nobody is sitting on the sofa, but a gray cat is curled up on one of the cushions facing the screen."),
        ("What kind of room is this?",
         "This is a cozy living room with a green sofa, a wooden coffee table, a floor lamp and a bookshelf "
         "full of books."),
        ("Is it day or night?",
         "It appears to be evening, because the floor lamp is switched on and the window behind the sofa shows a "
         "dark sky."),
    ),
    description=(
        "The image shows a cozy living room in the evening. A large flat-screen television sits on a low wooden "
        "cabinet and shows a news program; a reporter in a raincoat stands in front of a flooded street, and a "
        "red banner with a white caption runs along the bottom of the screen. Facing the television is a green "
        "fabric sofa with several patterned cushions, and a gray cat lies curled up on one of them, apparently "
        "asleep. A floor lamp next to the sofa gives off a warm yellow light. In front of the sofa, a wooden "
        "coffee table holds a mug, a remote control and a stack of magazines, and a tall bookshelf filled with "
        "books and a few potted plants stands against the wall."
    ),
    reasoning=(
        ("What might the person who lives here have been doing before the photo was taken?",
         "The person who lives here was probably watching the evening news just before the photo was taken. The "
         "television is still on and tuned to a news broadcast, the lamp next to the sofa is switched on, and a "
         "mug and a remote control sit on the coffee table within easy reach of the sofa. These details suggest "
         "that someone was relaxing on the sofa and stepped away for a moment, perhaps to the kitchen, leaving "
         "the cat to take over the warm cushion. The magazines on the table hint that they like to read as well."),
    ),
)

MUSEUM = Scene(
    name="museum",
    objects=("skeleton", "visitors", "display case", "guide"),
    rounds=(
        ("What is the main exhibit in this room?",
         "The main exhibit is a huge dinosaur skeleton standing in the middle of the hall, its long neck raised "
         "toward the ceiling."),
        ("Are there any signs or panels near the exhibit?",
         "Yes, there is a large panel in front of the skeleton with information given to visitors about the "
         "dinosaur's size, diet and the period it lived in, along with a small map of where its bones were found."),
        ("Who else is in the room?",
         "A group of schoolchildren is gathered around a guide, who is pointing up at the skeleton, and a few "
         "adult visitors are looking at the display cases along the walls."),
        ("What makes this exhibit interesting for children?",
         "The sheer size of the skeleton is what makes it so exciting for children. Standing next to it, they "
         "can see that even its leg bones are taller than they are, which makes the idea of a living dinosaur "
         "feel real in a way that pictures in a book cannot.\n\nThe guide also plays a big role. By pointing out "
         "details and probably asking questions, she turns the visit into a story about how the animal lived, "
         "what it ate and how scientists dug up its bones. The panels and the small map next to the skeleton give "
         "curious children something to read and explore on their own, while the display cases along the walls "
         "with fossils, teeth and eggs let them look closely at smaller objects. Together, these elements make "
         "the exhibit both fun and educational, and they often spark a lasting interest in science and history."),
    ),
    description=(
        "The image shows the grand main hall of a natural history museum, dominated by an enormous dinosaur "
        "skeleton mounted in the center of the room. The skeleton's long neck stretches up toward a high, "
        "arched ceiling with skylights, and its tail curves behind it across a raised platform. In front of the "
        "platform, a group of about fifteen schoolchildren in matching blue caps listens to a guide who points "
        "up at the skull. A large information panel stands next to the exhibit, and glass display cases line "
        "the walls on both sides, holding fossils, teeth and a clutch of fossilized eggs. Adult visitors stroll "
        "between the cases, and the polished stone floor reflects the light from the skylights."
    ),
    reasoning=(
        ("Why do museums often place a large skeleton like this in the entrance hall?",
         "Museums often put a large skeleton in the entrance hall because it makes a powerful first impression. "
         "As soon as visitors walk in, the enormous size of the dinosaur grabs their attention and sets the tone "
         "for the whole visit, much like a landmark. It also works as a natural meeting point, as seen with the "
         "school group gathered around their guide here. A famous centerpiece can become a symbol of the museum "
         "itself, appearing in photos and advertisements and drawing more visitors. Finally, the high ceiling of "
         "a main hall is often the only space tall enough to display such a large specimen in its full pose."),
    ),
)

CAFE = Scene(
    name="cafe",
    objects=("sign", "door", "chairs", "window"),
    rounds=(
        ("What does the sign on the door say?",
         "The handwritten sign taped to the glass door says \"I am sorry we are closed\", with a small smiley "
         "face drawn underneath."),
        ("Is the cafe open?",
         "No, the cafe appears to be closed. The chairs are stacked upside down on the tables and the lights "
         "inside are off."),
        ("What can be seen through the window?",
         "Through the window you can see a counter with an empty pastry display, a coffee machine and a "
         "chalkboard menu on the back wall."),
    ),
    description=(
        "The image shows the front of a small neighborhood cafe that is closed for the day. A glass door with a "
        "wooden frame is in the center of the picture, and a handwritten paper sign is taped to it at eye level. "
        "Through the large front window, the chairs can be seen stacked upside down on the round tables, and "
        "the room is dark. Behind the counter there is an espresso machine, an empty pastry display and a "
        "chalkboard menu on the wall. Two potted plants flank the entrance, a bicycle is locked to a rack on the "
        "sidewalk, and the late evening light gives the street a quiet, calm feeling."
    ),
    reasoning=(
        ("Why might the owner have written the sign by hand?",
         "The owner probably wrote the sign by hand because the closure was unplanned or temporary. A printed "
         "sign with regular opening hours would be used for normal closing times, while a quick handwritten note "
         "suggests something came up, such as an illness, a repair or a private event. Writing it by hand, with "
         "a friendly apology and a smiley face, also gives the message a personal touch that fits a small "
         "neighborhood cafe, where the owner likely knows many of the regular customers and wants to keep their "
         "goodwill even when the doors are shut."),
    ),
)

BASEBALL = Scene(
    name="baseball",
    objects=("batter", "catcher", "umpire", "bat"),
    rounds=(
        ("What sport is being played?", "The people in the image are playing baseball."),
        ("What is the batter doing?",
         "The batter is in the middle of a swing, with the bat held level as the ball approaches home plate."),
        ("Who is behind the batter?",
         "Behind the batter there is a catcher crouching with his mitt raised, and an umpire in black leaning "
         "over the catcher's shoulder."),
        ("Is there a crowd?",
         "Yes, the stands behind home plate are filled with spectators, many of them wearing the home team's "
         "blue caps."),
    ),
    description=(
        "The image captures a tense moment in a professional baseball game. At home plate, a batter in a white "
        "uniform with blue pinstripes swings his bat, his eyes fixed on the incoming ball. Behind him, the "
        "catcher in full protective gear crouches low with his mitt held up, and the umpire, dressed in black "
        "with a face mask, leans forward to judge the pitch. The dirt around the plate is freshly raked and the "
        "white chalk lines of the batter's box are sharp. Behind a protective net, the stands are packed with "
        "fans, many in blue caps and jerseys, some of them standing to get a better view of the swing."
    ),
    reasoning=(
        ("Why does the catcher wear so much protective equipment?",
         "The catcher wears a lot of protective equipment because he is in the most exposed position on the "
         "field. He crouches just behind home plate, where pitches arrive at high speed and can bounce in the "
         "dirt or be deflected off the bat in unpredictable directions. A foul tip or a wild pitch can hit him "
         "in the face, chest, knees or hands. The mask, helmet, chest protector and shin guards absorb these "
         "impacts, and the thickly padded mitt protects his hand from the repeated force of catching fast "
         "pitches for a whole game. Without this gear, serious injuries would be common."),
    ),
)

SKI = Scene(
    name="ski",
    objects=("skier", "ski lift", "snow", "poles"),
    rounds=(
        ("What are the people doing?", "The people are skiing down a snowy mountain slope."),
        ("How is the weather?",
         "The weather looks excellent for skiing: the sky is clear blue and the fresh snow is sparkling in the "
         "sunlight."),
        ("Is there a way to get back up the mountain?",
         "Yes, a chair lift runs up the slope on the right side of the image, and several chairs carrying skiers "
         "can be seen on the cable."),
    ),
    description=(
        "The image shows a wide, snow-covered mountain slope on a bright, sunny day. In the foreground, a skier "
        "in a red jacket and white helmet carves a turn, spraying a small cloud of powder snow behind the skis, "
        "and two more skiers follow further up the slope. On the right, a chair lift climbs the mountain, its "
        "chairs carrying pairs of skiers toward the summit. Dark green pine trees line the edge of the run, "
        "their branches heavy with snow, and jagged peaks rise against a deep blue, cloudless sky in the "
        "background."
    ),
    reasoning=(
        ("What should skiers keep in mind on a day like this?",
         "On a sunny day with fresh snow like this one, skiers should keep several things in mind. The strong "
         "sunlight reflecting off the snow can cause sunburn and snow blindness, so sunscreen and goggles or "
         "sunglasses are essential even though it is cold. Fresh powder can hide rocks or changes in the slope, "
         "so it is wise to stay on marked runs and keep a safe distance from other skiers, especially on a busy "
         "day when the chair lift is full. Skiers should also drink water, take breaks and watch for signs of "
         "fatigue, since most accidents happen late in the day when the legs are tired."),
        ("How can you tell that this is a popular ski area?",
         "Several details suggest a popular ski area. There is a modern chair lift with many chairs in use, "
         "which only makes sense where a lot of visitors come. The run itself is wide and well groomed, with "
         "clearly visible edges, and more than one group of skiers is using it at the same time. Lifts and "
         "groomed slopes need a lot of investment and regular maintenance, so resorts usually build them where "
         "they expect steady crowds throughout the season."),
    ),
)

OFFICE = Scene(
    name="office",
    objects=("laptop", "cat", "coffee mug", "desk"),
    rounds=(
        ("What animal is on the desk?", "A fluffy orange cat is lying on the desk."),
        ("Where exactly is the cat lying?",
         "The cat is stretched out right across the laptop's keyboard, with its head resting on the edge of the "
         "desk."),
        ("What else is on the desk?",
         "There is a white coffee mug, a notebook with a pen, a small potted cactus and a pair of glasses next to "
         "the laptop."),
        ("Why do cats like to lie on keyboards?",
         "Cats often lie on keyboards for a few simple reasons. A laptop gives off gentle warmth, and cats love "
         "warm spots to rest on. The keyboard is also right where their owner is looking, so lying there is a very "
         "effective way to get attention, and cats quickly learn that it makes people stop working and notice "
         "them. Finally, cats like to leave their scent on things that belong to the people they live with, and "
         "a much-used keyboard is one of those things"),
    ),
    description=(
        "The image shows a home office desk that has been taken over by a fluffy orange cat. The cat is lying "
        "across the keyboard of an open silver laptop, its paws tucked under its chest and its eyes half closed. "
        "The laptop screen behind it shows a spreadsheet. Around the laptop are a white coffee mug, a spiral "
        "notebook with a blue pen, a small potted cactus and a pair of black-rimmed glasses. A desk lamp leans "
        "over the scene, and a window on the left lets in soft daylight that falls across the cat's fur, making "
        "the scene look calm and a little funny."
    ),
    reasoning=(
        ("What might happen next in this scene?",
         "The owner of the desk will most likely have to move the cat before getting back to work. Since the cat "
         "is lying on the keyboard, its weight may already be pressing keys and typing random characters into the "
         "spreadsheet on the screen, so the owner may also need to undo some changes. Many people in this "
         "situation gently lift the cat onto their lap or offer it a blanket or a box nearby as an alternative "
         "warm spot. Given how relaxed the cat looks, it may also simply win, and the owner could decide to take "
         "a coffee break."),
    ),
)

ZOO = Scene(
    name="zoo",
    objects=("giraffe", "fence", "tree", "visitor"),
    rounds=(
        ("How many giraffes are there in the image?", "There are two giraffes in the image, an adult and a calf."),
        ("What is the adult giraffe doing?",
         "The adult giraffe is stretching its long neck to eat leaves from the top of a tall acacia tree."),
        ("Where are the giraffes?",
         "They are in a grassy zoo enclosure surrounded by a tall wooden fence, with a viewing platform for "
         "visitors on the left side."),
    ),
    description=(
        "The image shows two giraffes in a spacious, grassy zoo enclosure on a sunny day. The adult giraffe "
        "stands next to a tall acacia tree and stretches its neck high to pull leaves from the top branches with "
        "its long tongue. A smaller calf stands close to its side, looking toward the camera with its large dark "
        "eyes. Their coats are covered in irregular brown patches separated by cream-colored lines. A sturdy "
        "wooden fence runs along the back of the enclosure, and on the left, a raised wooden viewing platform "
        "holds a few visitors, one of them lifting a child up to get a better look."
    ),
    reasoning=(
        ("Why might the zoo have built a raised viewing platform?",
         "The zoo likely built a raised platform so that visitors can see the giraffes at eye level. Giraffes are "
         "the tallest land animals, and from the ground people would mostly see their legs and bellies. From a "
         "platform, visitors can watch them eat from the treetops and see their faces up close, which makes the "
         "experience much more memorable. Platforms like this are also often used for feeding sessions, where "
         "keepers let visitors offer leaves to the giraffes, which teaches people about the animals while "
         "keeping a safe distance and a barrier between them."),
    ),
)

RESTAURANT = Scene(
    name="restaurant",
    objects=("menu", "plates", "wine glass", "candle"),
    rounds=(
        ("What is on the table?",
         "The table is set for dinner with three plates of food, two glasses of red wine, a lit candle and an "
         "open menu."),
        ("What kind of food is being served?",
         "It looks like Italian food: there is a plate of spaghetti with tomato sauce, a margherita pizza and a "
         "bowl of risotto topped with mushrooms."),
        ("What does the menu show?",
         "The open menu lists the restaurant's dishes in two columns, and there is a short note in italics in "
         "the description of each dish, along with its price on the right."),
        ("Does this look like a formal restaurant?",
         "It looks more like a relaxed, family-run place than a formal one. The tablecloth is checkered, the "
         "candle stands in an old wine bottle and the walls are decorated with photos, which gives it a warm, "
         "casual atmosphere."),
    ),
    description=(
        "The image shows a dinner table at a cozy Italian restaurant. A red and white checkered tablecloth "
        "covers the table, and three plates are arranged on it: spaghetti in a rich tomato sauce sprinkled with "
        "basil, a margherita pizza with melted mozzarella, and a bowl of creamy mushroom risotto. Two glasses of "
        "red wine stand between the plates, next to a candle that burns in an old straw-covered wine bottle. An "
        "open menu lies at the edge of the table. In the background, the walls are covered with framed black "
        "and white photos, and soft, warm lighting gives the room an intimate atmosphere."
    ),
    reasoning=(
        ("What occasion might the diners be celebrating?",
         "The diners may be celebrating a small, personal occasion such as an anniversary, a birthday or simply "
         "a night out together. The candlelight, the glasses of wine and the choice of several dishes to share "
         "suggest a relaxed but special evening rather than a quick meal. The cozy, family-run style of the "
         "restaurant, with its checkered tablecloth and photos on the walls, is the kind of place people often "
         "choose for a meaningful dinner with someone close to them. Without more clues, such as a cake or gifts, "
         "it is not possible to say exactly what the occasion is."),
    ),
)

KITES = Scene(
    name="kites",
    objects=("kite", "girl", "hill", "father"),
    rounds=(
        ("What is the girl holding?", "The girl is holding the string of a large kite shaped like a fish."),
        ("What color is the kite?",
         "The kite is bright orange with yellow fins and a long blue tail that ripples in the wind."),
        ("Is she alone?",
         "No, a man who is probably her father is kneeling beside her and helping her hold the string steady."),
        ("Why is a hill a good place to fly a kite?",
         "A hill is a good place to fly a kite because the wind is usually stronger and steadier at the top, "
         "where there are no trees or buildings to block it. The open space also means the kite string will not "
         "get tangled in branches or power lines."),
    ),
    description=(
        "The image shows a young girl flying a kite on a grassy hill on a windy day. She stands near the top of "
        "the hill, holding a spool of string with both hands, and looks up with a big smile at her kite: a large, "
        "bright orange fish with yellow fins and a long, rippling blue tail. A man kneels beside her, one hand on "
        "the string to help keep it steady. The sky is filled with puffy white clouds, and two other kites, a red "
        "diamond and a green dragon, fly further away. At the bottom of the hill, a path winds past a small pond "
        "and a few benches."
    ),
    reasoning=(
        ("What does this scene tell us about the weather conditions?",
         "The scene suggests that the weather is ideal for flying kites: breezy but not stormy. Several kites "
         "are high in the air at the same time and the fish kite's long tail is stretched out and rippling, "
         "which means there is a steady wind. At the same time, the sky is bright with scattered white clouds "
         "rather than dark rain clouds, and the people are dressed in light jackets, so it is probably a mild "
         "spring or autumn day. A young child can hold the string with only a little help, which also shows the "
         "wind is strong enough to lift the kite without pulling it out of her hands."),
        ("What might the man be teaching the girl?",
         "The man is probably teaching the girl how to fly a kite on her own. Kneeling beside her at her height, "
         "with one hand on the string, he can show her how to feel the pull of the wind, when to let out more "
         "string and when to pull it in to keep the kite from falling.\n\nBeyond the practical skill, moments "
         "like this teach patience and persistence, since kites often crash a few times before they catch the "
         "wind, and the girl learns to try again instead of giving up. Her big smile suggests the lesson is "
         "going well."),
    ),
)

SCENES: tuple[Scene, ...] = (KITCHEN, BEACH, STREET, MARKET, PLATFORM, SKATEPARK, LIVING_ROOM, MUSEUM, CAFE,
                             BASEBALL, SKI, OFFICE, ZOO, RESTAURANT, KITES)
